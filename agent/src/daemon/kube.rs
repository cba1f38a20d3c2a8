//! Pod metadata from the Kubernetes API: the pods of this node (field selector
//! `spec.nodeName=<NODE_NAME>`), watched by kube-rs's watcher on a thread of its own, kept in a
//! bounded map pod UID → namespace, name, labels and container ID → container name.
//!
//! The daemon's loop never waits on the API: it reads the map (a read lock held for one lookup)
//! and a generation number that changes with every change of the map, which tells it when to
//! label processes again. With no cluster the agent says once why and runs on with what the
//! cgroup tells (container ID, pod UID). API errors are counted, logged at most once a minute,
//! and retried with the watcher's backoff (0.8 s doubling to 30 s, with jitter); never fatal.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt as _;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;

use super::config::{Config, KubernetesMode};

/// What the API says about one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Container ID (64 hex, the runtime's `scheme://` prefix removed) → container name, for the
    /// app, init and ephemeral containers that have started.
    pub containers: HashMap<String, String>,
}

impl PodRecord {
    /// The pod's UID and record; None for an object without a UID (not a stored pod).
    pub fn from_pod(pod: &Pod) -> Option<(String, PodRecord)> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let mut containers = HashMap::new();
        if let Some(status) = &pod.status {
            let lists =
                [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses];
            for c in lists.into_iter().flatten().flatten() {
                if let Some(id) = c.container_id.as_deref().and_then(container_id) {
                    containers.insert(id.to_string(), c.name.clone());
                }
            }
        }
        let record = PodRecord {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            containers,
        };
        Some((uid, record))
    }

    /// The `service` label a pod gives itself: `app.kubernetes.io/name`, else `app`.
    pub fn app_name(&self) -> Option<&str> {
        ["app.kubernetes.io/name", "app"].iter().find_map(|k| self.labels.get(*k)).map(String::as_str)
    }
}

/// `containerd://3f9c…` → `3f9c…` (also `cri-o://`, `docker://`); None when empty.
pub fn container_id(status_id: &str) -> Option<&str> {
    let id = status_id.split_once("://").map_or(status_id, |(_, id)| id);
    (!id.is_empty()).then_some(id)
}

/// The watcher's state as the daemon's health metrics show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KubeHealth {
    /// A cluster configuration was found and the watch runs.
    pub enabled: bool,
    /// The pod list was received and no error came since (see [`PodIndex::health`]).
    pub up: bool,
    pub pods: usize,
    pub errors: u64,
    pub dropped: u64,
}

/// The pods of this node, shared by the watcher thread (writer) and the daemon loop (reader).
pub struct PodIndex {
    pods: RwLock<HashMap<String, Arc<PodRecord>>>,
    max_pods: usize,
    generation: AtomicU64,
    enabled: AtomicBool,
    synced: AtomicBool,
    /// The watcher listed the pods once, failed once, or is not running.
    settled: AtomicBool,
    errors: AtomicU64,
    dropped: AtomicU64,
    /// Milliseconds after `epoch` (+1, so 0 means never) of the last error and the last event.
    last_error_ms: AtomicU64,
    last_event_ms: AtomicU64,
    epoch: Instant,
}

/// Pods per list page: a page is decoded whole (full Pod objects) before its records are kept,
/// and the allocator keeps what a large page took. Measured with 1,000 pods of 10 labels and 2
/// containers each: agent RSS 8 MiB above the one-pod figure with pages of 500 (kube's default),
/// 3 MiB with pages of 100.
const LIST_PAGE: u32 = 100;

/// While the API cannot be reached the watcher retries at most every 30 s (its backoff's cap,
/// plus jitter); this long without an error means a retry got through.
const QUIET_AFTER_ERROR: Duration = Duration::from_secs(45);

impl PodIndex {
    pub fn new(max_pods: usize) -> Self {
        Self {
            pods: RwLock::new(HashMap::new()),
            max_pods,
            generation: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error_ms: AtomicU64::new(0),
            last_event_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn get(&self, uid: &str) -> Option<Arc<PodRecord>> {
        self.pods.read().unwrap_or_else(|e| e.into_inner()).get(uid).cloned()
    }

    /// Changes whenever a pod is added, changed or removed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Still finding the cluster or waiting for the first list (the daemon's start waits a little
    /// for it, so processes already running get their pod labels at once).
    pub fn starting(&self) -> bool {
        !self.settled.load(Ordering::Relaxed)
    }

    fn settle(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }

    /// `up`: the first list arrived, and since the last error either an event arrived or
    /// [`QUIET_AFTER_ERROR`] passed (a quiet watch produces no events to prove itself by).
    pub fn health(&self) -> KubeHealth {
        let (error, event) = (self.last_error_ms.load(Ordering::Relaxed), self.last_event_ms.load(Ordering::Relaxed));
        let quiet = self.now_ms().saturating_sub(error) >= QUIET_AFTER_ERROR.as_millis() as u64;
        KubeHealth {
            enabled: self.enabled(),
            up: self.enabled() && self.synced.load(Ordering::Relaxed) && (error == 0 || event > error || quiet),
            pods: self.pods.read().unwrap_or_else(|e| e.into_inner()).len(),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// A pod was added or changed. False when the map is full and the pod is new (counted).
    pub fn apply(&self, uid: String, record: PodRecord) -> bool {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        if pods.get(&uid).is_some_and(|r| **r == record) {
            return true;
        }
        if pods.len() >= self.max_pods && !pods.contains_key(&uid) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        pods.insert(uid, Arc::new(record));
        drop(pods);
        self.changed();
        true
    }

    pub fn delete(&self, uid: &str) {
        if self.pods.write().unwrap_or_else(|e| e.into_inner()).remove(uid).is_some() {
            self.changed();
        }
    }

    /// A full list replaces the map (pods deleted while the watch was down go with it).
    pub fn replace_all(&self, pods: HashMap<String, Arc<PodRecord>>) {
        *self.pods.write().unwrap_or_else(|e| e.into_inner()) = pods;
        self.synced.store(true, Ordering::Relaxed);
        self.settle();
        self.changed();
    }

    fn event(&self) {
        self.last_event_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error_ms.store(self.now_ms(), Ordering::Relaxed);
        self.settle();
    }
}

/// Starts watching this node's pods if the config and the environment say so; returns at once.
/// Whatever happens (no cluster, no permission, API down), the index is usable and the reason is
/// logged: once when Kubernetes metadata is off, at most once a minute for API errors.
pub fn start(cfg: &Config) -> Arc<PodIndex> {
    let index = Arc::new(PodIndex::new(cfg.kubernetes_max_pods));
    // Settled unless a watcher starts below.
    let off = |index: Arc<PodIndex>| {
        index.settle();
        index
    };
    let node_env = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty());
    let node = match (cfg.kubernetes, node_env) {
        (KubernetesMode::Off, _) => {
            log::info!("Kubernetes metadata off (kubernetes = \"off\"): labels come from cgroups (container ID) only");
            return off(index);
        }
        (KubernetesMode::Auto, None) => {
            log::info!(
                "Kubernetes metadata off: NODE_NAME is not set (the DaemonSet sets it from spec.nodeName; \
                 kubernetes = \"on\" uses this host's name); labels come from cgroups (container ID) only"
            );
            return off(index);
        }
        (_, Some(node)) => node,
        (KubernetesMode::On, None) => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_lowercase();
            log::info!(
                "kubernetes = \"on\" and NODE_NAME is not set: watching the pods of node `{host}` (this host's name)"
            );
            host
        }
    };
    let watched = index.clone();
    let spawned = std::thread::Builder::new().name("kube-pods".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                log::warn!("Kubernetes metadata off: cannot start the watcher's runtime: {e}");
                watched.settle();
                return;
            }
        };
        // kube-rs reports through `tracing`, which falls back to the `log` logger: one ERROR line
        // per retry. The agent logs the watcher's errors itself, once a minute at most; kube's
        // own lines stay available with RUST_LOG=kube_client=debug (or debug).
        if log::log_enabled!(target: "kube_client", log::Level::Debug) {
            rt.block_on(watch(watched.clone(), node));
        } else {
            let quiet = tracing::subscriber::NoSubscriber::default();
            tracing::subscriber::with_default(quiet, || rt.block_on(watch(watched.clone(), node)));
        }
        watched.settle();
    });
    if let Err(e) = spawned {
        log::warn!("Kubernetes metadata off: cannot start the watcher thread: {e}");
        return off(index);
    }
    index
}

async fn watch(index: Arc<PodIndex>, node: String) {
    let config = match ::kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            log::info!(
                "Kubernetes metadata off: no cluster configuration ({e}); labels come from cgroups (container ID) only"
            );
            return;
        }
    };
    let server = config.cluster_url.to_string();
    let client = match ::kube::Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("Kubernetes metadata off: cannot make an API client for {server}: {e}");
            return;
        }
    };
    index.enabled.store(true, Ordering::Relaxed);
    log::info!("Kubernetes metadata: watching the pods of node `{node}` at {server}");
    let selector = format!("spec.nodeName={node}");
    let api: ::kube::Api<Pod> = ::kube::Api::all(client);
    let mut events = watcher::watcher(api, watcher::Config::default().fields(&selector).page_size(LIST_PAGE))
        .default_backoff()
        .boxed();
    let mut errors = ErrorLog::default();
    let mut listing: Option<HashMap<String, Arc<PodRecord>>> = None;
    let mut listed_once = false;
    while let Some(item) = events.next().await {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                index.error();
                errors.log(&e);
                continue;
            }
        };
        // `Init` comes before the list request is even sent: only the others show the API answered.
        if !matches!(ev, Event::Init) {
            index.event();
            errors.recovered(&index);
        }
        match ev {
            Event::Init => listing = Some(HashMap::new()),
            Event::InitApply(pod) => {
                let (Some(pods), Some((uid, record))) = (&mut listing, PodRecord::from_pod(&pod)) else { continue };
                if pods.len() < index.max_pods || pods.contains_key(&uid) {
                    pods.insert(uid, Arc::new(record));
                } else {
                    index.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::InitDone => {
                let pods = listing.take().unwrap_or_default();
                if !listed_once {
                    log::info!("Kubernetes metadata on: {} pod(s) on node `{node}`", pods.len());
                    listed_once = true;
                }
                index.replace_all(pods);
            }
            Event::Apply(pod) => {
                if let Some((uid, record)) = PodRecord::from_pod(&pod) {
                    index.apply(uid, record);
                }
            }
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    index.delete(uid);
                }
            }
        }
    }
}

/// API errors: the first logged at once, then at most one line a minute with how many it stood for.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    unlogged: u64,
    since_ok: u64,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn log(&mut self, e: &watcher::Error) {
        self.since_ok += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.unlogged += 1;
            return;
        }
        // kube's errors name the step ("failed to start watching object"); the cause (refused,
        // reset, 403) is further down the chain.
        let mut e: &dyn std::error::Error = e;
        let mut text = e.to_string();
        while let Some(source) = e.source() {
            let s = source.to_string();
            if !text.contains(&s) {
                text = format!("{text}: {s}");
            }
            e = source;
        }
        let more = match self.unlogged {
            0 => String::new(),
            n => format!(" ({n} more error(s) in the last minute)"),
        };
        log::warn!(
            "Kubernetes API: {text}{more}; retrying with backoff. Pod labels keep their last known values; \
             check that the API server is reachable and that the agent's service account may get/list/watch \
             pods (deploy/manifests/02-rbac.yaml)"
        );
        self.last = Some(Instant::now());
        self.unlogged = 0;
    }

    fn recovered(&mut self, index: &PodIndex) {
        if self.since_ok > 0 {
            log::info!(
                "Kubernetes API answers again after {} error(s); {} pod(s) known",
                self.since_ok,
                index.health().pods
            );
            self.since_ok = 0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ID: &str = "3f9c2a1b7e5d4c6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "llm-0", "namespace": "serving", "uid": uid,
                "labels": {"app.kubernetes.io/name": "llm", "app": "other", "tier": "gpu"}
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "server"}, {"name": "sidecar"}]},
            "status": {
                "containerStatuses": [
                    {"name": "server", "containerID": format!("containerd://{ID}"), "image": "i", "imageID": "",
                     "ready": true, "restartCount": 0},
                    {"name": "sidecar", "image": "i", "imageID": "", "ready": false, "restartCount": 0}
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "cri-o://0123", "image": "i", "imageID": "", "ready": false,
                     "restartCount": 0}
                ]
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_becomes_a_record() {
        let (uid, r) = PodRecord::from_pod(&pod("u-1")).unwrap();
        assert_eq!((uid.as_str(), r.namespace.as_str(), r.name.as_str()), ("u-1", "serving", "llm-0"));
        assert_eq!(r.containers.get(ID).map(String::as_str), Some("server"));
        assert_eq!(r.containers.get("0123").map(String::as_str), Some("init"));
        assert_eq!(r.containers.len(), 2, "a container that has not started has no ID yet");
        assert_eq!(r.app_name(), Some("llm"), "app.kubernetes.io/name before app");
        let mut no_uid = pod("");
        assert!(PodRecord::from_pod(&no_uid).is_none());
        no_uid.metadata.uid = None;
        assert!(PodRecord::from_pod(&no_uid).is_none());
        assert_eq!(container_id("docker://abc"), Some("abc"));
        assert_eq!(container_id("containerd://"), None);
    }

    #[test]
    fn the_map_is_bounded_and_counts_what_it_refused() {
        let index = PodIndex::new(2);
        let g0 = index.generation();
        let rec = |name: &str| PodRecord { name: name.into(), ..Default::default() };
        assert!(index.apply("a".into(), rec("a")));
        assert!(index.apply("b".into(), rec("b")));
        assert!(!index.apply("c".into(), rec("c")), "full");
        assert!(index.apply("a".into(), rec("a2")), "a known pod may change when full");
        let h = index.health();
        assert_eq!((h.pods, h.dropped), (2, 1));
        assert_eq!(index.get("a").unwrap().name, "a2");
        let g1 = index.generation();
        assert!(g1 > g0);
        assert!(index.apply("a".into(), rec("a2")));
        assert_eq!(index.generation(), g1, "an unchanged pod is not a change");
        index.delete("a");
        index.delete("zzz");
        assert!(index.get("a").is_none());
        assert_eq!(index.generation(), g1 + 1);
        index.replace_all(HashMap::from([("z".to_string(), Arc::new(rec("z")))]));
        assert_eq!((index.health().pods, index.get("z").unwrap().name.as_str()), (1, "z"));
    }

    #[test]
    fn up_means_listed_and_no_unanswered_error() {
        let index = PodIndex::new(8);
        assert!(!index.health().up, "not enabled");
        index.enabled.store(true, Ordering::Relaxed);
        assert!(!index.health().up, "not listed yet");
        index.replace_all(HashMap::new());
        index.event();
        assert!(index.health().up);
        std::thread::sleep(Duration::from_millis(2));
        index.error();
        let h = index.health();
        assert!(!h.up && h.errors == 1, "{h:?}");
        std::thread::sleep(Duration::from_millis(2));
        index.event();
        assert!(index.health().up, "an event after the error");
    }
}
