//! Server shutdown in two steps: every client is told to leave, and whoever is still connected
//! when the operator's deadline passes is closed. (A room's media lives on one node, so there is
//! no other node to move its participants to.)

use livekit_protocol as lk;
use tokio::sync::oneshot;

use super::{Leave, Msg, Service, ServiceError, SessionId, Signaling, response};
use lk::signal_response;

impl Signaling {
    /// Sends `Leave { reason: SERVER_SHUTDOWN, action: DISCONNECT }` to every connected client
    /// that has not been told yet and leaves its session open, so that the client closes it
    /// itself and its room empties in order. Returns how many clients were told now. New joins
    /// are not refused here; the HTTP layer stops accepting them before calling this.
    pub async fn ask_to_leave(&self) -> Result<usize, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::AskToLeave { reply })
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    /// Ends every session at once (`Leave { SERVER_SHUTDOWN, DISCONNECT }`, then close): what is
    /// left when the drain deadline passes. Returns how many sessions were ended.
    pub async fn drain(&self) -> Result<usize, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Drain { reply })
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }
}

impl Service {
    pub(super) fn ask_to_leave(&mut self) -> usize {
        let mut told = 0;
        for session in self.sessions.values_mut().filter(|s| !s.asked_to_leave) {
            let leave = lk::LeaveRequest {
                can_reconnect: false,
                reason: lk::DisconnectReason::ServerShutdown as i32,
                action: lk::leave_request::Action::Disconnect as i32,
                ..Default::default()
            };
            // A full queue means a client that reads nothing; the deadline closes it.
            if session
                .out
                .try_send(response(signal_response::Message::Leave(leave)))
                .is_ok()
            {
                session.asked_to_leave = true;
                told += 1;
            }
        }
        told
    }

    pub(super) async fn drain(&mut self) -> usize {
        let sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        for &session in &sessions {
            self.end_session(
                session,
                "server shutting down",
                Leave::Disconnect(lk::DisconnectReason::ServerShutdown),
            )
            .await;
        }
        sessions.len()
    }
}
