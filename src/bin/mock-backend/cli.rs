//! The command line: flags, their defaults and limits, parsed into `Config`.

use std::time::Duration;

pub(crate) const USAGE: &str = "usage: mock-backend [--addr HOST:PORT] [--model NAME]... \
    [--chunks N] [--chunk-delay-ms D] [--prefill-ms P] [--max-model-len N] [--embedding-dims N] \
    [--api-key KEY] [--strict-request-id] [--head-with-first-token] [--name NAME] [--verbose]";
/// Most completion tokens one request may ask for.
pub(crate) const MAX_TOKENS: u64 = 100_000;
/// Longest pause a request may ask for before each token, or before the first.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(600);
/// Largest `--max-model-len` accepted.
pub(crate) const MAX_MODEL_LEN: u64 = 100_000_000;
/// Longest embedding vector `--embedding-dims` may ask for.
pub(crate) const MAX_EMBEDDING_DIMS: u64 = 65_536;
/// What `/v1/models` reports as `max_model_len` when `--max-model-len` is not given.
pub(crate) const DEFAULT_MAX_MODEL_LEN: u64 = 4096;
pub(crate) const DEFAULT_MODEL: &str = "mock-llama";

/// Settings from the command line.
pub(crate) struct Config {
    pub(crate) addr: String,
    pub(crate) models: Vec<String>,
    pub(crate) chunks: u64,
    pub(crate) chunk_delay: Duration,
    /// Time to the first token: before a stream's role chunk, and part of a non-stream's wait.
    pub(crate) prefill: Duration,
    /// vLLM's `--max-model-len`: enforced only when given (see `context`).
    pub(crate) max_model_len: Option<u64>,
    /// Length of the vectors `/v1/embeddings` answers with (before `dimensions` shortens them).
    pub(crate) embedding_dims: usize,
    pub(crate) api_key: Option<String>,
    /// Refuse a non-UUID `x-request-id` as llama-cpp-python does (see `request_id`).
    pub(crate) strict_request_id: bool,
    /// Send a stream's response head only with its first event, after the prefill, as
    /// llama.cpp's `llama-server` and Ollama do (vLLM, SGLang and TGI send it at once).
    pub(crate) head_with_first_token: bool,
    /// Which faults this instance obeys: `mock.fault_on` names the one that should fail, so a
    /// failover test can break one backend and not its replacement.
    pub(crate) name: Option<String>,
    pub(crate) verbose: bool,
}

pub(crate) enum CliError {
    Help,
    Invalid(String),
}

pub(crate) fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Config, CliError> {
    let mut config = Config {
        addr: "127.0.0.1:0".to_owned(),
        models: Vec::new(),
        chunks: 8,
        chunk_delay: Duration::ZERO,
        prefill: Duration::ZERO,
        max_model_len: None,
        embedding_dims: 8,
        api_key: None,
        strict_request_id: false,
        head_with_first_token: false,
        name: None,
        verbose: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, mut inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
            _ => (arg, None),
        };
        let mut value =
            || inline.take().or_else(|| args.next()).ok_or_else(|| CliError::Invalid(format!("{flag} needs a value")));
        match flag.as_str() {
            "--addr" => config.addr = value()?,
            "--model" => config.models.push(value()?),
            "--chunks" => config.chunks = parse_number(&flag, &value()?, MAX_TOKENS)?,
            "--chunk-delay-ms" => {
                config.chunk_delay = Duration::from_millis(parse_number(&flag, &value()?, millis(MAX_DELAY))?);
            }
            "--prefill-ms" => {
                config.prefill = Duration::from_millis(parse_number(&flag, &value()?, millis(MAX_DELAY))?);
            }
            "--max-model-len" => {
                let len = parse_number(&flag, &value()?, MAX_MODEL_LEN)?;
                if len == 0 {
                    return Err(CliError::Invalid(format!("{flag} must be at least 1")));
                }
                config.max_model_len = Some(len);
            }
            "--embedding-dims" => {
                let dims = parse_number(&flag, &value()?, MAX_EMBEDDING_DIMS)?;
                config.embedding_dims = match usize::try_from(dims) {
                    Ok(dims) if dims > 0 => dims,
                    _ => return Err(CliError::Invalid(format!("{flag} must be at least 1"))),
                };
            }
            "--api-key" => config.api_key = Some(value()?),
            "--strict-request-id" => config.strict_request_id = true,
            "--head-with-first-token" => config.head_with_first_token = true,
            "--name" => config.name = Some(value()?),
            "--verbose" | "-v" => config.verbose = true,
            "--help" | "-h" => return Err(CliError::Help),
            other => return Err(CliError::Invalid(format!("unknown argument `{other}`"))),
        }
    }
    if config.models.is_empty() {
        config.models.push(DEFAULT_MODEL.to_owned());
    }
    Ok(config)
}

fn parse_number(flag: &str, text: &str, max: u64) -> Result<u64, CliError> {
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(CliError::Invalid(format!("{flag} expects an integer from 0 to {max}, got `{text}`"))),
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
