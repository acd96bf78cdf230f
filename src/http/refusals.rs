//! The HTTP answers to what the document and dashboard layers refuse.

use axum::http::StatusCode;
use tandem_crdt::RoomError;

use crate::dashboard::hub::PublishError;
use crate::docs::RoomOpError;
use crate::error::ApiError;

/// The answer to a publication that failed.
pub(super) fn publish_error(workspace: &str, err: PublishError) -> ApiError {
    match err {
        PublishError::Store(e) => ApiError::storage(&e),
        PublishError::NotDurable(e) => {
            tracing::error!(%workspace, error = %e, "event logged but not flushed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the event could not be made durable in time; it may still be delivered",
            )
        }
    }
}

/// The answer to a room that refused a request.
pub(super) fn room_error(err: RoomOpError) -> ApiError {
    match err {
        RoomOpError::Room(RoomError::TooLarge { limit }) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "document_too_large",
            format!("the document would exceed its limit of {limit} bytes"),
        ),
        RoomOpError::Room(RoomError::TooManyTypes { limit }) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_types",
            format!("the document would hold more than {limit} shared types"),
        ),
        RoomOpError::Room(RoomError::BadStateVector(e)) => {
            ApiError::bad_request("bad_state_vector", format!("malformed state vector: {e}"))
        }
        RoomOpError::Room(RoomError::Poisoned) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "document_reloading",
            "the document is reloading; retry",
        ),
        RoomOpError::Room(e) => ApiError::bad_request("bad_update", e.to_string()),
        RoomOpError::Store(e) => ApiError::storage(&e),
    }
}
