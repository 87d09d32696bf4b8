//! The node registry for operators: the living nodes sharing the store with their load, and
//! drain (a drained node takes no new rooms). Server tokens only.

use super::*;
use crate::nodes::Node;

/// The node routes.
pub(super) fn routes() -> Router<Control> {
    Router::new().route("/api/nodes", get(list_nodes)).route(
        "/api/nodes/{id}/drain",
        post(drain_node).delete(undrain_node),
    )
}

/// `GET /api/nodes`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodesView {
    /// This node's id.
    pub this: String,
    /// The living nodes, by id.
    pub nodes: Vec<Node>,
}

fn server_only(caller: &Caller) -> Result<(), ControlError> {
    match caller.0 {
        Principal::Server => Ok(()),
        Principal::User { .. } => Err(ControlError::forbidden(
            "server_only",
            "nodes are seen and drained with a server token",
        )),
    }
}

/// The living nodes sharing this node's store (Redis: every node; embedded: this one), with
/// their load and whether they are draining (server tokens).
#[utoipa::path(get, path = "/api/nodes",
    responses((status = 200, body = NodesView), (status = 403, body = ErrorBody)))]
pub(super) async fn list_nodes(
    State(c): State<Control>,
    caller: Caller,
) -> Result<Json<NodesView>, ControlError> {
    server_only(&caller)?;
    Ok(Json(NodesView {
        this: c.instance().to_owned(),
        nodes: c.nodes().await?,
    }))
}

/// Drains a node: it takes no new rooms; rooms with members connected there stay until
/// they empty (server tokens). Lasts while the node lives.
#[utoipa::path(post, path = "/api/nodes/{id}/drain", params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = Node), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn drain_node(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Node>, ControlError> {
    server_only(&caller)?;
    Ok(Json(c.drain_node(&id, true).await?))
}

/// Lifts an operator's drain (server tokens).
#[utoipa::path(delete, path = "/api/nodes/{id}/drain", params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = Node), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn undrain_node(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Node>, ControlError> {
    server_only(&caller)?;
    Ok(Json(c.drain_node(&id, false).await?))
}
