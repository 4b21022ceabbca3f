//! `src/core/rate_limit`: the arithmetic alone, then budgets through the whole pipeline.

mod budgets;
mod gcra;
