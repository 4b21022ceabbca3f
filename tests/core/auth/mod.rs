//! `src/core/auth`: credentials are pinned in `gateway`, tokens here.

mod jwt;
