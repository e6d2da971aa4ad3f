//! What a task says when it cannot serve a request. The task names the problem; http/ decides the status.

/// Why a task refused or failed a request. Each message names the field, the limit and the value where there is
/// one; it reaches the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The request is well formed but a value is out of range or of the wrong kind (a parameter, an image's
    /// aspect ratio, a text the tokenizer refuses).
    #[error("{0}")]
    Invalid(String),
    /// The request's content cannot be read: a corrupt or truncated image, an empty one.
    #[error("{0}")]
    Unreadable(String),
    /// The request is larger than a limit allows (an image's pixels).
    #[error("{0}")]
    TooLarge(String),
    /// The server failed at its own part of the work (resizing, encoding): not the client's fault.
    #[error("{0}")]
    Failed(String),
}

impl TaskError {
    /// The same error with its message rewritten, e.g. prefixed with the request field it concerns.
    pub fn map_message(self, rewrite: impl FnOnce(String) -> String) -> TaskError {
        match self {
            TaskError::Invalid(m) => TaskError::Invalid(rewrite(m)),
            TaskError::Unreadable(m) => TaskError::Unreadable(rewrite(m)),
            TaskError::TooLarge(m) => TaskError::TooLarge(rewrite(m)),
            TaskError::Failed(m) => TaskError::Failed(rewrite(m)),
        }
    }
}
