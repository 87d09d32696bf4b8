//! Errors of the control plane, each with an HTTP status, a stable code and a message.

use serde::Serialize;
use utoipa::ToSchema;

/// An error a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ControlError {
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Seconds after which the same request may succeed (a kick's cooldown, a rate limit).
    pub retry_after: Option<u64>,
    /// The room the error is about, when it is another room than the one asked for (e.g.
    /// `already_in_room` names the room the caller is still in).
    pub room: Option<RoomRef>,
}

/// A room named in an error: its id and title.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RoomRef {
    /// Room id.
    pub id: String,
    /// Title.
    pub title: String,
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// Seconds after which the same request may succeed, when that is known (e.g. `kicked`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The other room the error is about (`already_in_room`: the room the caller is in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomRef>,
}

impl ControlError {
    /// Any status.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ControlError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            room: None,
        }
    }

    /// The same error, naming the room it is about.
    #[must_use]
    pub fn about_room(mut self, id: impl Into<String>, title: impl Into<String>) -> Self {
        self.room = Some(RoomRef {
            id: id.into(),
            title: title.into(),
        });
        self
    }

    /// The same error, saying that the request may succeed after `seconds`.
    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(403, code, message)
    }

    /// 404 for a `kind` named `id`.
    pub fn not_found(kind: &str, id: &str) -> Self {
        let shown: String = id.chars().take(64).collect();
        Self::new(404, "not_found", format!("no {kind} {shown:?}"))
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    /// 422.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, code, message)
    }

    /// 429.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(429, "rate_limited", message)
    }

    /// 503: the store or media plane failed.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }

    /// The response body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
            retry_after: self.retry_after,
            room: self.room.clone(),
        }
    }
}

impl axum::response::IntoResponse for ControlError {
    fn into_response(self) -> axum::response::Response {
        let status = axum::http::StatusCode::from_u16(self.status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}
