//! What a failure inside libtorch or task code says, in one line: for the client's error and the log.

/// libtorch errors arrive as pages: a TorchScript traceback, then the Python-style `XxxError: ...` line that
/// says what went wrong, sometimes a C++ backtrace. Clients and logs get that one line.
pub fn torch_error_summary(message: &str) -> String {
    let without_backtrace = message.split("Exception raised from").next().unwrap_or(message);
    let lines = || without_backtrace.lines().map(str::trim).filter(|l| !l.is_empty());
    let is_error_line = |line: &&str| line.split_once(": ").is_some_and(|(kind, _)| kind.ends_with("Error"));
    let summary = lines().rfind(is_error_line).or_else(|| lines().next()).unwrap_or(message);
    summary.strip_prefix("Internal torch error: ").unwrap_or(summary).to_string()
}

/// The message a caught panic carried (`panic!` with a literal or a formatted string). Pass the payload itself
/// (`panic.as_ref()`): a `&Box<dyn Any>` would coerce to a `&dyn Any` of the box, which downcasts to nothing.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Runs `work`, turning a panic in it into `Err("panic: <its message>")`: task or model code fails its own
/// batch, step or load, never the thread that runs it.
pub fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
        .map_err(|panic| format!("panic: {}", panic_message(panic.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::torch_error_summary;

    #[test]
    fn torch_errors_are_summarised_by_their_error_line() {
        let scripted = "Internal torch error: The following operation failed in the TorchScript interpreter.\n\
            Traceback of TorchScript, serialized code (most recent call last):\n  File \"code/__torch__.py\", line 6\n\
            _0 = torch.matmul(argument_1, argument_1)\n\n\
            RuntimeError: Expected size for first two dimensions of batch2 tensor to be: [1, 3] but got: [1, 2].\n";
        assert_eq!(
            torch_error_summary(scripted),
            "RuntimeError: Expected size for first two dimensions of batch2 tensor to be: [1, 3] but got: [1, 2]."
        );
        let plain = "Internal torch error: open file failed because of errno 2 on fopen: No such file\n\
            Exception raised from RAIIFile at ../caffe2/serialize/file_adapter.cc:30 (most recent call first):\nframe #0: c10::Error";
        assert_eq!(torch_error_summary(plain), "open file failed because of errno 2 on fopen: No such file");
    }
}
