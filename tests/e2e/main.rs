//! End-to-end: the release wasm in its real runtime, over real HTTP, against the mock backend.
//!
//! Every case in `cases.rs` runs against each runtime listed here (one list, not copies): the
//! Workers bundle in workerd, and the Spin component in a WASI-HTTP host. Build the artefacts
//! first (`make test` does): `make worker spin`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Drives real processes over real sockets on real time (the core's own tests run on a virtual clock).
#![allow(clippy::disallowed_methods)]

#[path = "../support/mod.rs"]
mod support;

mod boundary;
mod cases;
mod component_world;
mod harness;
mod redis_scripts;
mod wasi;
mod workerd;

/// The cases, named once; `run_cases!(runtime_module, shared_gateway, dedicated_gateway)` makes
/// one `#[test]` per case. Most share one gateway; a few launch their own (to restart or
/// reconfigure it).
macro_rules! run_cases {
    ($runtime:ident, $start:path, $dedicated:path) => {
        mod $runtime {
            run_cases!(@dedicated $dedicated;
                limits_anonymous_callers_per_client_ip,
                limit_state_survives_a_runtime_restart,
                every_backend_fault_has_its_defined_outcome_with_and_without_failover,
                a_backend_that_keeps_failing_is_ejected_across_requests,
                a_backend_failing_inside_a_committed_stream_is_ejected_before_its_first_token,
                each_timeout_phase_fires_on_its_own_limit,
                all_backends_ejected_is_a_503_that_says_when_to_retry,
                readyz_probes_once_per_period_and_names_no_model,
                a_long_prefill_is_kept_alive_until_its_first_token,
            );
            run_cases!(@dedicated_in boundary, $dedicated;
                a_backend_splitting_events_anywhere_reaches_the_client_unchanged,
                a_backend_dying_mid_event_ends_the_stream_with_one_error_event,
                the_idle_timeout_still_holds_after_the_client_paused_reading,
                a_client_leaving_a_kept_alive_stream_frees_everything,
                a_stream_committed_at_once_ends_as_a_direct_stream_does,
                a_committed_stream_keeps_its_total_deadline_before_and_after_its_backend_began,
                clients_leaving_a_committed_stream_as_its_backend_begins_keep_nothing,
                a_zero_commit_delay_commits_every_stream_at_once,
            );
            run_cases!(@each_in boundary, $start;
                clients_leaving_at_any_moment_keep_no_slot,
                odd_header_lists_and_a_chunked_body_cross_the_boundary,
            );
            run_cases!(@each $start;
                healthz_answers_ok_without_auth,
                rejects_missing_and_wrong_keys_with_401,
                lists_models_for_the_key,
                unknown_path_is_404_and_wrong_method_405,
                proxies_a_completion_with_the_backend_credential,
                streams_chunks_as_they_arrive,
                a_client_disconnect_closes_the_backend_stream,
                drops_the_usage_chunk_unless_asked_and_keeps_done,
                keeps_the_usage_chunk_when_asked,
                rejects_each_bad_input_class_with_400,
                refuses_an_oversized_body_with_413,
                refuses_over_the_request_limit_with_429,
                maps_backend_errors_without_leaking_internals,
                a_backend_reset_mid_stream_ends_with_an_error_event,
                answers_cors_preflight_for_allowed_origins,
                readyz_is_200_then_503_once_a_backend_stops,
                admits_exactly_the_limit_of_1000_concurrent_requests,
                in_flight_streams_never_exceed_the_cap,
                a_client_disconnect_releases_its_in_flight_slot,
                settles_tokens_on_real_usage,
                accepts_a_jwt_beside_api_keys,
                the_official_python_sdk_works_unmodified,
                the_official_node_sdk_works_unmodified,
                a_real_browser_streams_in_the_playground_and_cors_refuses_other_origins,
                backends_get_uuid_request_ids_and_only_allow_listed_headers,
                a_backends_error_event_mid_stream_becomes_the_gateways_error,
                injected_max_tokens_fit_a_small_context,
                requests_sharing_one_request_id_each_need_their_own_slot,
                the_token_estimate_cannot_be_undercut,
                every_tokenized_text_counts_toward_the_content_cap,
                a_client_that_leaves_before_the_answer_does_not_keep_its_slot,
                a_backends_retry_after_is_clamped,
                a_callers_trace_reaches_the_backend_and_the_log,
                embeddings_are_validated_proxied_and_limited,
                legacy_completions_are_validated_proxied_streamed_and_limited,
                the_responses_api_is_validated_proxied_streamed_and_limited,
                a_model_is_retrieved_only_by_keys_that_may_list_it,
            );
        }
    };
    (@dedicated $launch:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                crate::cases::$case($launch);
            }
        )*
    };
    (@dedicated_in $module:ident, $launch:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                crate::$module::$case($launch);
            }
        )*
    };
    (@each_in $module:ident, $start:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                crate::$module::$case($start());
            }
        )*
    };
    (@each $start:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                crate::cases::$case($start());
            }
        )*
    };
}

run_cases!(workerd_gateway, crate::workerd::gateway, crate::workerd::dedicated);
run_cases!(wasi_gateway, crate::wasi::gateway, crate::wasi::dedicated);

/// Cases about the Workers build alone (its bindings), run in workerd only.
mod workerd_gateway_only {
    #[test]
    fn each_request_writes_one_analytics_engine_point_equal_to_its_log_record() {
        crate::cases::each_request_writes_one_analytics_engine_point_equal_to_its_log_record(crate::workerd::dedicated);
    }
}

/// Cases about the Spin build alone (its Redis, its host), run on the WASI host only.
mod wasi_gateway_only {
    #[test]
    fn limits_hold_with_redis_at_an_ipv6_literal() {
        crate::cases::limits_hold_with_redis_at_an_ipv6_literal(crate::wasi::dedicated);
    }

    #[test]
    fn a_stalled_or_refused_redis_costs_a_request_its_timeout_then_service_resumes() {
        crate::cases::a_stalled_or_refused_redis_costs_a_request_its_timeout_then_service_resumes(
            crate::wasi::dedicated,
        );
    }

    #[test]
    fn a_stream_outlasting_an_idle_redis_connection_still_frees_its_slot() {
        crate::cases::a_stream_outlasting_an_idle_redis_connection_still_frees_its_slot(crate::wasi::dedicated);
    }

    #[test]
    fn a_redis_stall_inside_a_request_does_not_keep_its_slot() {
        crate::cases::a_redis_stall_inside_a_request_does_not_keep_its_slot(crate::wasi::dedicated);
    }

    #[test]
    fn a_redis_connection_closed_under_a_stream_is_replaced_for_its_settlement() {
        crate::cases::a_redis_connection_closed_under_a_stream_is_replaced_for_its_settlement(crate::wasi::dedicated);
    }

    #[test]
    fn a_release_sent_during_a_redis_stall_runs_when_redis_resumes() {
        crate::cases::a_release_sent_during_a_redis_stall_runs_when_redis_resumes(crate::wasi::dedicated);
    }

    #[test]
    fn a_redis_that_trickles_its_reply_still_costs_one_timeout() {
        crate::cases::a_redis_that_trickles_its_reply_still_costs_one_timeout(crate::wasi::dedicated);
    }

    #[test]
    fn a_settlement_refused_for_now_is_asked_again() {
        crate::cases::a_settlement_refused_for_now_is_asked_again(crate::wasi::dedicated);
    }

    #[test]
    fn a_full_redis_that_needs_a_password_says_why() {
        crate::cases::a_full_redis_that_needs_a_password_says_why(crate::wasi::dedicated);
    }

    #[test]
    fn bytes_nobody_asked_for_never_answer_the_next_command() {
        crate::cases::bytes_nobody_asked_for_never_answer_the_next_command(crate::wasi::dedicated);
    }

    #[test]
    fn a_configuration_error_names_its_variable_and_is_logged_once_per_instance() {
        crate::cases::a_configuration_error_names_its_variable_and_is_logged_once_per_instance(crate::wasi::bare);
    }
}
