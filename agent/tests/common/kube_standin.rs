//! A stand-in Kubernetes API server for the tests (there is no cluster here): plain HTTP on
//! 127.0.0.1, serving what the agent's pod watcher asks for — `GET /api/v1/pods` as a list and as
//! a watch (`watch=true`, chunked stream of `{"type","object"}` lines from a `resourceVersion`),
//! with `fieldSelector=spec.nodeName=…` applied as the real server applies it, and a bearer token
//! checked. The agent reaches it through a kubeconfig file, so kube-rs's real client, watcher and
//! backoff run. `stop` takes the API away (open watches are cut mid-stream), `restart` brings it
//! back on the same port with the same pods and history.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const TOKEN: &str = "standin-token";

#[derive(Default)]
struct ApiState {
    resource_version: u64,
    /// UID → pod as stored (with its resourceVersion).
    pods: BTreeMap<String, Value>,
    /// Every change: (resourceVersion, ADDED/MODIFIED/DELETED, object).
    history: Vec<(u64, &'static str, Value)>,
    /// Request targets seen (path and decoded query), for assertions.
    requests: Vec<String>,
}

type Shared = Arc<(Mutex<ApiState>, Condvar)>;

pub struct KubeApiStandin {
    pub port: u16,
    state: Shared,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl KubeApiStandin {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut api = KubeApiStandin {
            port,
            state: Arc::new((Mutex::new(ApiState::default()), Condvar::new())),
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
        };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let (state, stop) = (self.state.clone(), self.stop.clone());
        self.server = Some(std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (state, stop) = (state.clone(), stop.clone());
                        conns.push(std::thread::spawn(move || handle(s, &state, &stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            drop(listener);
            state.1.notify_all();
            for c in conns {
                let _ = c.join();
            }
        }));
    }

    /// The API goes away: the port refuses connections and open watches are cut.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.1.notify_all();
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }

    /// Back on the same port, with the same pods and history.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "stop first");
        self.stop.store(false, Ordering::Relaxed);
        let t0 = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                    eprintln!("stand-in API: rebinding port {}: {e}", self.port);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("stand-in API cannot bind its port again: {e}"),
            }
        };
        self.serve(listener);
    }

    /// Adds the pod, or replaces the one with its UID (a watch sees ADDED or MODIFIED).
    pub fn put_pod(&self, mut pod: Value) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap();
        st.resource_version += 1;
        let rv = st.resource_version;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let kind = if st.pods.insert(uid, pod.clone()).is_some() { "MODIFIED" } else { "ADDED" };
        st.history.push((rv, kind, pod));
        cv.notify_all();
    }

    pub fn delete_pod(&self, uid: &str) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap();
        let Some(mut pod) = st.pods.remove(uid) else { return };
        st.resource_version += 1;
        pod["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        let rv = st.resource_version;
        st.history.push((rv, "DELETED", pod));
        cv.notify_all();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.0.lock().unwrap().requests.clone()
    }

    /// A kubeconfig that points at this server with its token.
    pub fn write_kubeconfig(&self, path: &Path) {
        self.write_kubeconfig_as(path, TOKEN);
    }

    /// The same with another bearer token, which this server forbids (403), as the real one
    /// does for a service account without get/list/watch on pods.
    pub fn write_kubeconfig_as(&self, path: &Path, token: &str) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 users:\n- name: standin\n  user:\n    token: {token}\ncontexts:\n- name: standin\n  context:\n    \
                 cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\n",
                self.port
            ),
        )
        .unwrap();
    }
}

impl Drop for KubeApiStandin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running pod on `node` with one started container per `(name, containerd id)`.
pub fn pod(
    uid: &str,
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    containers: &[(&str, &str)],
) -> Value {
    let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
        "spec": {
            "nodeName": node,
            "containers": containers.iter().map(|(n, _)| json!({"name": n, "image": "standin"})).collect::<Vec<_>>()
        },
        "status": {
            "phase": "Running",
            "containerStatuses": containers.iter().map(|(n, id)| json!({
                "name": n, "containerID": format!("containerd://{id}"), "image": "standin", "imageID": "",
                "ready": true, "restartCount": 0, "started": true, "state": {"running": {}}
            })).collect::<Vec<_>>()
        }
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(s: &mut TcpStream, status: &str, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
           "reason": reason, "code": code})
}

fn handle(mut s: TcpStream, state: &Shared, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut token = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                token = value.trim().strip_prefix("Bearer ").map(str::to_string);
            }
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    state.0.lock().unwrap().requests.push(format!("{path}?{params:?}"));
    match token.as_deref() {
        None => return respond(&mut s, "401 Unauthorized", &status_body(401, "Unauthorized", "Unauthorized")),
        Some(TOKEN) => {}
        Some(_) => {
            let msg = "pods is forbidden: User \"system:serviceaccount:inferscope:inferscope\" cannot list \
                       resource \"pods\" in API group \"\" at the cluster scope";
            return respond(&mut s, "403 Forbidden", &status_body(403, "Forbidden", msg));
        }
    }
    if !request_line.starts_with("GET ") || path != "/api/v1/pods" {
        return respond(
            &mut s,
            "404 Not Found",
            &status_body(404, "NotFound", "the stand-in serves GET /api/v1/pods only"),
        );
    }
    // The real server accepts a handful of pod fields; the agent must use spec.nodeName.
    let node = match params.get("fieldSelector").map(String::as_str) {
        None | Some("") => None,
        Some(sel) => match sel.strip_prefix("spec.nodeName=") {
            Some(n) => Some(n.to_string()),
            None => {
                let msg = format!("field selector {sel:?} not supported by the stand-in");
                return respond(&mut s, "400 Bad Request", &status_body(400, "BadRequest", &msg));
            }
        },
    };
    let on_node = |pod: &Value| node.as_deref().is_none_or(|n| pod["spec"]["nodeName"] == n);
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        // Pages of `limit` items, the continue token being where the next page starts (the real
        // server's token is opaque and pins the resourceVersion; this one is served from now).
        let st = state.0.lock().unwrap();
        let start: usize = params.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = params.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
        let matching: Vec<&Value> = st.pods.values().filter(|p| on_node(p)).collect();
        let items: Vec<&Value> = matching.iter().skip(start).take(limit).copied().collect();
        let mut metadata = json!({"resourceVersion": st.resource_version.to_string()});
        if start.saturating_add(limit) < matching.len() {
            metadata["continue"] = json!((start + limit).to_string());
        }
        let list = json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items});
        drop(st);
        return respond(&mut s, "200 OK", &list);
    }
    let mut from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = Duration::from_secs(params.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(300));
    if write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").is_err() {
        return;
    }
    let t0 = Instant::now();
    let (lock, cv) = &**state;
    // resourceVersion 0 (or none): the current pods as ADDED first, then changes.
    let mut pending: Vec<String> = Vec::new();
    if from == 0 {
        let st = lock.lock().unwrap();
        pending
            .extend(st.pods.values().filter(|p| on_node(p)).map(|p| json!({"type": "ADDED", "object": p}).to_string()));
        from = st.resource_version;
    }
    loop {
        for line in pending.drain(..) {
            let line = format!("{line}\n");
            if write!(s, "{:x}\r\n{line}\r\n", line.len()).is_err() {
                return;
            }
        }
        if stop.load(Ordering::Relaxed) {
            return; // cut mid-stream, as a server that goes away does
        }
        if t0.elapsed() >= timeout {
            let _ = write!(s, "0\r\n\r\n");
            return;
        }
        let st = lock.lock().unwrap();
        let (st, _) = cv.wait_timeout(st, Duration::from_millis(100)).unwrap();
        let seen = from;
        for (rv, kind, obj) in st.history.iter().filter(|(rv, _, _)| *rv > seen) {
            from = *rv;
            if on_node(obj) {
                pending.push(json!({"type": kind, "object": obj}).to_string());
            }
        }
    }
}
