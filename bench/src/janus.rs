//! Janus as a comparison SFU: its videoroom plugin, started as a child process, and a small
//! adapter that lets the harness's LiveKit-protocol clients drive it unchanged.
//!
//! The adapter speaks Janus's WebSocket API (`janus-protocol`, JSON) for one client and
//! translates it to and from the LiveKit messages the client already exchanges: Janus's
//! subscriber offer arrives as a LiveKit `Offer`, the client's `Answer` becomes `start` with that
//! answer; a speaker's `AddTrack` is accepted locally, its `Offer` becomes `publish` and Janus's
//! answer a LiveKit `Answer`; pings become keepalives and the leave request `destroy`. So the
//! media side of a client (str0m peers, real Opus, what listeners measure) is the same code for
//! both servers.
//!
//! Janus never gathers ICE candidates on a loopback interface; the workaround (from the project's
//! notes on test peers) is a veth interface holding a loopback-range address such as 127.0.0.2,
//! inside a private network namespace. [`JanusProcess::spawn`] refuses to start without one.
//!
//! Differences from a LiveKit session that a reader of the numbers should know: a Janus listener
//! subscribes to the feeds published when it joins (the comparison scenarios start speakers
//! first), speakers do not subscribe, and muting is local (the speaker stops sending).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use serde_json::{Value, json};
use tokio::net::TcpStream as TokioTcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::{ClientError, Role, Signals};
use crate::server::{ServerError, pinned_command, wait_listening};

/// The videoroom every comparison run uses (configured in the plugin's file, so no client
/// needs an admin secret).
pub const ROOM: u64 = 1234;
/// Where the Debian package puts Janus's plugins and transports.
const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu/janus";
/// Longest wait for one Janus response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a listener waits for a publisher to appear in the room.
const FEED_WAIT: Duration = Duration::from_secs(10);

/// Plugins and transports that the comparison does not use, disabled so that Janus neither
/// loads them nor binds their ports.
const UNUSED_PLUGINS: &str = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,\
libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,\
libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so";
const UNUSED_TRANSPORTS: &str =
    "libjanus_http.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so";

type Ws = WebSocketStream<MaybeTlsStream<TokioTcpStream>>;

/// The first IPv4 loopback-range address on an interface that is not the loopback interface
/// (Janus's ICE uses only such interfaces), with that interface's name.
pub fn veth_loopback_address() -> Option<(String, Ipv4Addr)> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.flags
            .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        if ip.is_loopback() {
            return Some((a.interface_name, ip));
        }
    }
    None
}

/// A `janus` child process with a configuration of its own (videoroom over WebSocket only, on
/// a free 127.0.0.1 port); killed, and its directory (configuration and `janus.log`) removed,
/// when dropped, unless `STOA_BENCH_KEEP_JANUS` is set (to read the log after a failed run).
#[derive(Debug)]
pub struct JanusProcess {
    child: Child,
    dir: PathBuf,
    /// Its WebSocket address.
    pub ws: SocketAddr,
}

impl JanusProcess {
    /// Start `janus` under `taskset -c cpus` when given, with `event_loops` static event-loop
    /// threads (0: Janus's default of one thread per handle), and wait (bounded) until it
    /// listens. Refuses when no veth interface holds a loopback-range address (module docs).
    pub fn spawn(cpus: Option<&str>, event_loops: usize) -> Result<JanusProcess, ServerError> {
        let Some((interface, _)) = veth_loopback_address() else {
            return Err(ServerError::Spawn(io::Error::other(
                "Janus gathers no ICE candidate on a loopback interface: run inside a network \
                 namespace with a veth interface holding 127.0.0.2 (`stoa-bench compare` sets \
                 one up)",
            )));
        };
        let ws_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir =
            std::env::temp_dir().join(format!("stoa-bench-janus-{}-{ws_port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        write_config(&dir, ws_port, event_loops, &interface)?;
        let mut command = pinned_command("janus", cpus);
        let log = dir.join("janus.log");
        let child = command
            .arg("-F")
            .arg(&dir)
            .arg("-L")
            .arg(&log)
            .args(["--disable-colors", "--debug-level=3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("start janus (Debian package `janus`): {e}"),
                )
            })?;
        let mut process = JanusProcess {
            child,
            dir,
            ws: SocketAddr::from(([127, 0, 0, 1], ws_port)),
        };
        if let Err(e) = wait_listening(process.ws, &mut process.child) {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            tracing::warn!(log = ?tail, "janus did not start");
            return Err(e);
        }
        Ok(process)
    }

    /// The process id (that of `janus` itself: `taskset` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its configuration and log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for JanusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("STOA_BENCH_KEEP_JANUS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Janus's main file, the WebSocket transport's and the videoroom's with [`ROOM`].
fn write_config(dir: &Path, ws_port: u16, event_loops: usize, interface: &str) -> io::Result<()> {
    let loops = if event_loops > 0 {
        format!("event_loops = {event_loops}")
    } else {
        String::new()
    };
    let main = format!(
        r#"general: {{
    configs_folder = "{dir}"
    plugins_folder = "{LIB_DIR}/plugins"
    transports_folder = "{LIB_DIR}/transports"
    events_folder = "{LIB_DIR}/events"
    loggers_folder = "{LIB_DIR}/loggers"
    debug_level = 3
    session_timeout = 60
    {loops}
}}
media: {{
}}
nat: {{
    nice_debug = false
    ice_enforce_list = "{interface}"
}}
plugins: {{
    disable = "{UNUSED_PLUGINS}"
}}
transports: {{
    disable = "{UNUSED_TRANSPORTS}"
}}
loggers: {{
    disable = "libjanus_jsonlog.so"
}}
events: {{
}}
"#,
        dir = dir.display()
    );
    let ws = format!(
        r#"general: {{
    json = "compact"
    ws = true
    ws_port = {ws_port}
    ws_ip = "127.0.0.1"
    wss = false
}}
admin: {{
    admin_ws = false
    admin_wss = false
}}
"#
    );
    let room = format!(
        r#"general: {{
}}
room-{ROOM}: {{
    description = "stoa-bench"
    publishers = 32
    audiocodec = "opus"
    audiolevel_ext = true
    audiolevel_event = false
    notify_joining = false
}}
"#
    );
    std::fs::write(dir.join("janus.jcfg"), main)?;
    std::fs::write(dir.join("janus.transport.websockets.jcfg"), ws)?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), room)
}

/// One client's link to Janus: LiveKit requests go in, LiveKit responses come out.
#[derive(Debug)]
pub(crate) struct Link {
    /// Requests the client would send to a LiveKit server.
    pub requests: mpsc::Sender<signal_request::Message>,
    /// What a LiveKit server would have answered.
    pub responses: Signals,
    /// The adapter's task.
    pub task: tokio::task::JoinHandle<()>,
}

/// Open a Janus session for one client: create, attach the videoroom, and join the room as a
/// publisher (speakers) or as a subscriber of every feed in it (listeners).
pub(crate) async fn connect(
    ws_addr: SocketAddr,
    role: Role,
    display: &str,
) -> Result<Link, ClientError> {
    let mut request = format!("ws://{ws_addr}/")
        .into_client_request()
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-protocol"),
    );
    let (ws, _) = tokio::time::timeout(RESPONSE_TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| ClientError::Timeout("the WebSocket upgrade"))?
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut janus = Janus {
        ws,
        transactions: 0,
        session: 0,
        handle: 0,
        offers: 0,
        publish_offer: None,
    };
    janus.session = janus
        .call(json!({"janus": "create"}), false)
        .await
        .and_then(|v| data_id(&v))?;
    let attach = json!({"janus": "attach", "plugin": "janus.plugin.videoroom"});
    janus.handle = janus.call(attach, false).await.and_then(|v| data_id(&v))?;
    let (requests_tx, requests) = mpsc::channel(16);
    let (responses, responses_rx) = mpsc::channel(64);
    match role {
        Role::Speaker => {
            let join =
                json!({"request": "join", "ptype": "publisher", "room": ROOM, "display": display});
            let joined = janus.message(join, None, true).await?;
            plugin_data(&joined)?;
        }
        Role::Listener => {
            let feeds = janus.feeds().await?;
            let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
            let join =
                json!({"request": "join", "ptype": "subscriber", "room": ROOM, "streams": streams});
            // Janus answers with its offer, which the running adapter passes on.
            let event = janus.message(join, None, true).await?;
            janus.forward(event, &responses).await;
        }
    }
    let task = tokio::spawn(janus.run(requests, responses));
    Ok(Link {
        requests: requests_tx,
        responses: responses_rx,
        task,
    })
}

struct Janus {
    ws: Ws,
    transactions: u64,
    session: u64,
    handle: u64,
    /// Offers passed on, numbered as LiveKit numbers them.
    offers: u32,
    /// The id of the speaker's offer waiting for Janus's answer.
    publish_offer: Option<u32>,
}

impl Janus {
    fn transaction(&mut self) -> String {
        self.transactions += 1;
        format!("t{}", self.transactions)
    }

    /// Send a request with a fresh transaction.
    async fn send(&mut self, mut request: Value) -> Result<String, ClientError> {
        let transaction = self.transaction();
        request["transaction"] = json!(transaction);
        if self.session != 0 {
            request["session_id"] = json!(self.session);
        }
        if self.handle != 0 && request["janus"] == "message" {
            request["handle_id"] = json!(self.handle);
        }
        tracing::trace!(message = %request, "to Janus");
        self.ws
            .send(WsMessage::Text(request.to_string().into()))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(transaction)
    }

    /// The next JSON message from Janus.
    async fn next(&mut self) -> Result<Value, ClientError> {
        loop {
            match self.ws.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    tracing::trace!(message = %t.as_str(), "from Janus");
                    return serde_json::from_str(t.as_str()).map_err(|e| {
                        ClientError::Protocol(format!("undecodable Janus message: {e}"))
                    });
                }
                Some(Ok(WsMessage::Close(_))) | None => return Err(ClientError::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ClientError::Connect(e.to_string())),
            }
        }
    }

    /// Send `request` and wait for its reply: `success` (or, with `event`, the plugin's
    /// asynchronous `event` after Janus's `ack`). Unrelated messages met meanwhile are dropped:
    /// before the session runs there are none a client needs.
    async fn call(&mut self, request: Value, event: bool) -> Result<Value, ClientError> {
        let transaction = self.send(request).await?;
        tokio::time::timeout(RESPONSE_TIMEOUT, async {
            loop {
                let m = self.next().await?;
                if m["transaction"] != transaction.as_str() {
                    continue;
                }
                match m["janus"].as_str() {
                    Some("ack") if event => continue,
                    Some("error") => return Err(janus_error(&m)),
                    _ => return Ok(m),
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout("a Janus response"))?
    }

    /// A videoroom request on this client's handle.
    async fn message(
        &mut self,
        body: Value,
        jsep: Option<Value>,
        event: bool,
    ) -> Result<Value, ClientError> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            m["jsep"] = jsep;
        }
        self.call(m, event).await
    }

    /// Ids of the room's publishers, waiting (bounded) until there is one.
    async fn feeds(&mut self) -> Result<Vec<u64>, ClientError> {
        #[allow(clippy::disallowed_methods)]
        let until = Instant::now() + FEED_WAIT;
        loop {
            let list = self
                .message(
                    json!({"request": "listparticipants", "room": ROOM}),
                    None,
                    false,
                )
                .await?;
            let data = plugin_data(&list)?;
            let feeds: Vec<u64> = data["participants"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["publisher"] == true)
                .filter_map(|p| p["id"].as_u64())
                .collect();
            #[allow(clippy::disallowed_methods)]
            let late = Instant::now() > until;
            if !feeds.is_empty() {
                return Ok(feeds);
            }
            if late {
                return Err(ClientError::Timeout("a publisher in the Janus room"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Pass on what a Janus event means to a LiveKit client: an offer or an answer.
    async fn forward(
        &mut self,
        event: Value,
        responses: &mpsc::Sender<Result<signal_response::Message, ClientError>>,
    ) {
        let out = match (plugin_data(&event), event["jsep"]["type"].as_str()) {
            (Err(e), _) => Some(Err(e)),
            (Ok(_), Some("offer")) => {
                self.offers += 1;
                Some(Ok(signal_response::Message::Offer(description(
                    &event,
                    "offer",
                    self.offers,
                ))))
            }
            (Ok(_), Some("answer")) => self.publish_offer.take().map(|id| {
                Ok(signal_response::Message::Answer(description(
                    &event, "answer", id,
                )))
            }),
            _ => None,
        };
        if let Some(out) = out {
            let _ = responses.send(out).await;
        }
    }

    /// Translate until the client leaves or either side closes.
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<signal_request::Message>,
        responses: mpsc::Sender<Result<signal_response::Message, ClientError>>,
    ) {
        loop {
            tokio::select! {
                m = self.next() => match m {
                    Ok(m) => match m["janus"].as_str() {
                        Some("event") => self.forward(m, &responses).await,
                        Some("hangup") | Some("detached") => {
                            let reason = m["reason"].as_str().unwrap_or("hangup").to_owned();
                            let _ = responses.send(Err(ClientError::Protocol(format!("Janus hung up: {reason}")))).await;
                            return;
                        }
                        Some("error") => {
                            let _ = responses.send(Err(janus_error(&m))).await;
                            return;
                        }
                        _ => {}
                    },
                    Err(e) => {
                        let _ = responses.send(Err(e)).await;
                        return;
                    }
                },
                r = requests.recv() => {
                    let Some(r) = r else { return };
                    if let Err(e) = self.request(r, &responses).await {
                        let _ = responses.send(Err(e)).await;
                        return;
                    }
                }
            }
        }
    }

    /// One LiveKit request, done the Janus way.
    async fn request(
        &mut self,
        r: signal_request::Message,
        responses: &mpsc::Sender<Result<signal_response::Message, ClientError>>,
    ) -> Result<(), ClientError> {
        match r {
            signal_request::Message::Answer(sd) => {
                let body = json!({"janus": "message", "body": {"request": "start"}, "jsep": {"type": "answer", "sdp": sd.sdp}});
                self.send(body).await?;
            }
            signal_request::Message::AddTrack(t) => {
                let published = lk::TrackPublishedResponse {
                    cid: t.cid.clone(),
                    track: Some(lk::TrackInfo {
                        sid: format!("TR_janus_{}", self.handle),
                        r#type: t.r#type,
                        name: t.name,
                        ..Default::default()
                    }),
                };
                let _ = responses
                    .send(Ok(signal_response::Message::TrackPublished(published)))
                    .await;
            }
            signal_request::Message::Offer(sd) => {
                self.publish_offer = Some(sd.id);
                let body = json!({"janus": "message", "body": {"request": "publish", "audiocodec": "opus"}, "jsep": {"type": "offer", "sdp": sd.sdp}});
                self.send(body).await?;
            }
            signal_request::Message::PingReq(_) => {
                self.send(json!({"janus": "keepalive"})).await?;
            }
            signal_request::Message::Leave(_) => {
                self.send(json!({"janus": "destroy"})).await?;
                let _ = self.ws.close(None).await;
            }
            // Muting is local with Janus: the speaker stops sending.
            _ => {}
        }
        Ok(())
    }
}

/// `data.id` of a `success` reply (session and handle ids).
fn data_id(v: &Value) -> Result<u64, ClientError> {
    v["data"]["id"]
        .as_u64()
        .ok_or_else(|| ClientError::Protocol(format!("Janus reply without an id: {v}")))
}

/// The videoroom's part of an event or reply; its errors become client errors.
fn plugin_data(v: &Value) -> Result<&Value, ClientError> {
    let data = &v["plugindata"]["data"];
    if data.is_null() {
        return Err(ClientError::Protocol(format!(
            "Janus reply without plugin data: {v}"
        )));
    }
    if let Some(code) = data["error_code"].as_u64() {
        let reason = data["error"].as_str().unwrap_or("");
        return Err(ClientError::Protocol(format!(
            "Janus videoroom error {code}: {reason}"
        )));
    }
    Ok(data)
}

/// A Janus-level `error` reply as a client error.
fn janus_error(v: &Value) -> ClientError {
    let code = v["error"]["code"].as_u64().unwrap_or(0);
    let reason = v["error"]["reason"].as_str().unwrap_or("");
    ClientError::Protocol(format!("Janus error {code}: {reason}"))
}

/// The event's JSEP as a LiveKit session description.
fn description(event: &Value, kind: &str, id: u32) -> lk::SessionDescription {
    lk::SessionDescription {
        r#type: kind.into(),
        sdp: event["jsep"]["sdp"].as_str().unwrap_or_default().to_owned(),
        id,
        ..Default::default()
    }
}
