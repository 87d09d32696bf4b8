//! Server shutdown: every session is told to leave and closed.

use livekit_protocol as lk;
use tokio::sync::oneshot;

use super::{Leave, Msg, Service, ServiceError, SessionId, Signaling};

impl Signaling {
    /// Sends every connected client `Leave { reason: SERVER_SHUTDOWN, action: DISCONNECT }` and
    /// closes its session. Returns how many sessions were ended. New joins are not refused here;
    /// the HTTP layer stops accepting them before calling this.
    pub async fn drain(&self) -> Result<usize, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Drain { reply })
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }
}

impl Service {
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
