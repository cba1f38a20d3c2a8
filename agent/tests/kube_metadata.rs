//! Kubernetes metadata in daemon mode, against the real kernel and kube-rs's real client: a
//! stand-in Kubernetes API server (tests/common/kube_standin.rs, reached through a kubeconfig)
//! reports pods, and real server processes run in cgroups shaped as the kubelet makes them
//! (`kubepods.slice/…/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`, cgroup v2).
//! Checked: the field selector on the node name, `pod_labels` rules, namespace/pod/container
//! labels on /metrics, a pod that the API reports after its process started (rules tried again,
//! followed processes labelled again), the API going away and coming back (the agent keeps
//! measuring, counts the errors, logs them rate-limited), no permission, no cluster at all, and
//! the pod map's bound with a paged list. Needs root.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::*;
use common::kube_standin::{pod, KubeApiStandin};
use common::*;

const NODE: &str = "node-a";

/// The cgroup v2 hierarchy: /sys/fs/cgroup itself (unified) or /sys/fs/cgroup/unified (hybrid).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .min_by_key(|p| p.as_os_str().len());
    root.expect("a cgroup v2 hierarchy is mounted (the tests put processes into pod-shaped cgroups there)")
}

/// A pod's container cgroup as the kubelet (systemd driver) and containerd name it; removed
/// (with the pod and QoS slices it created) on drop, once its processes are gone.
struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn create(uid: &str, container_id: &str) -> PodCgroup {
        let mut path = cgroup2_root();
        let mut dirs = Vec::new();
        for seg in [
            "kubepods.slice".to_string(),
            "kubepods-besteffort.slice".to_string(),
            format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
            format!("cri-containerd-{container_id}.scope"),
        ] {
            path.push(seg);
            if !path.exists() {
                std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
                dirs.push(path.clone());
            }
        }
        PodCgroup { dirs }
    }

    fn procs(&self) -> PathBuf {
        self.dirs.last().unwrap().join("cgroup.procs")
    }

    /// `argv` started inside this cgroup: a shell moves itself in, then execs the program, so the
    /// program's exec (which the agent sees) already happens in the pod's cgroup.
    fn spawn(&self, argv: &[&str]) -> (Proc, u16) {
        let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
        Proc::start(
            Command::new("sh")
                .args(["-c", &format!("echo $$ > {} && exec {}", self.procs().display(), quoted.join(" "))]),
        )
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Shared parents (kubepods.slice…) were created by whoever came first; rmdir of a
        // non-empty one fails harmlessly and the last owner removes it.
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for parent in ["kubepods.slice/kubepods-besteffort.slice", "kubepods.slice"] {
            let _ = std::fs::remove_dir(cgroup2_root().join(parent));
        }
    }
}

fn hex_id(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

fn sse_server() -> String {
    workspace_root().join("target/release/sse-server").display().to_string()
}

fn config() -> String {
    r#"
reconcile_seconds = 2
series_grace_seconds = 1
gpu_sample_hz = 0
kubernetes_max_pods = 16
[[rule]]
name = "by-labels"
pod_labels = { "app.kubernetes.io/name" = "tiny-llm", tier = "gpu" }
[[rule]]
name = "py-sse"
comm = ["python3"]
cmdline = ["*sse_server.py*"]
"#
    .to_string()
}

fn in_cluster(api: &KubeApiStandin, dir: &Path) -> Daemon {
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    Daemon::start_with(dir, &config(), &[], |cmd| {
        cmd.env("NODE_NAME", NODE).env("KUBECONFIG", &kubeconfig).env_remove("KUBERNETES_SERVICE_HOST");
    })
}

const STREAM: &str = "tokens=4&interval_ms=2&prefill_ms=2";

fn requests(m: &str, labels: &[(&str, &str)]) -> f64 {
    metric(m, "inferscope_requests_total", labels)
}

#[test]
fn pods_from_the_api_label_targets_and_match_rules() {
    let _serial = require_root();
    let dir = scratch_dir("kube");
    let (uid_a, uid_b, uid_c) = (
        "0a0a0a0a-1111-4222-8333-444444444444",
        "0b0b0b0b-1111-4222-8333-444444444444",
        "0c0c0c0c-1111-4222-8333-444444444444",
    );
    let (id_a, id_b, id_c) = (hex_id('a'), hex_id('b'), hex_id('c'));
    let labels = [("app.kubernetes.io/name", "tiny-llm"), ("tier", "gpu")];
    let mut api = KubeApiStandin::start();
    api.put_pod(pod(uid_a, "serving", "tiny-llm-0", NODE, &labels, &[("server", &id_a)]));
    // The same labels on another node: the agent must not even hear of it.
    api.put_pod(pod("0d0d0d0d-1111-4222-8333-444444444444", "serving", "tiny-llm-9", "node-b", &labels, &[]));

    let (cg_a, cg_b, cg_c) =
        (PodCgroup::create(uid_a, &id_a), PodCgroup::create(uid_b, &id_b), PodCgroup::create(uid_c, &id_c));
    let mut d = in_cluster(&api, &dir);
    d.wait_ready();
    d.wait_for("pods listed", |m| {
        metric(m, "inferscope_kube_watch_up", &[]) == 1.0
            && metric(m, "inferscope_kube_pods", &[]) == 1.0
            && metric(m, "inferscope_kube_metadata_enabled", &[]) == 1.0
    });
    let asked = api.requests();
    assert!(
        asked
            .iter()
            .all(|r| r.starts_with("/api/v1/pods?") && r.contains(r#""fieldSelector": "spec.nodeName=node-a""#)),
        "every request asks for this node's pods only: {asked:#?}"
    );

    // 1. The pod is known before its process starts: the pod_labels rule matches at exec.
    let (srv_a, port_a) =
        cg_a.spawn(&[&sse_server(), "--port", "0", "--truth", &dir.join("a.jsonl").display().to_string()]);
    let pod_a = [("service", "tiny-llm"), ("namespace", "serving"), ("pod", "tiny-llm-0"), ("container", "server")];
    d.wait_for("pod A's server followed", |m| metric(m, "inferscope_targets", &[]) == 1.0);
    load(port_a, 5, STREAM, "req-a-");
    d.wait_for("pod A's requests with pod labels", |m| requests(m, &pod_a) == 5.0);

    // 2. The process starts first, its pod arrives later: the rule is tried again then.
    let (_srv_b, port_b) =
        cg_b.spawn(&[&sse_server(), "--port", "0", "--truth", &dir.join("b.jsonl").display().to_string()]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(metric(&d.metrics(), "inferscope_targets", &[]), 1.0, "pod B unknown: its labels cannot match yet");
    api.put_pod(pod(uid_b, "serving", "tiny-llm-1", NODE, &labels, &[("server", &id_b)]));
    d.wait_for("pod B's server followed once its pod is known", |m| metric(m, "inferscope_targets", &[]) == 2.0);
    load(port_b, 3, STREAM, "req-b-");
    d.wait_for("pod B's requests", |m| {
        requests(m, &[("namespace", "serving"), ("pod", "tiny-llm-1"), ("container", "server")]) == 3.0
    });

    // 3. Followed (by command line) before its pod is known: cgroup labels first, pod labels later.
    let (_srv_c, port_c) = cg_c.spawn(&[
        "python3",
        &workspace_root().join("tests/servers/sse_server.py").display().to_string(),
        "--port",
        "0",
        "--truth",
        &dir.join("c.jsonl").display().to_string(),
    ]);
    d.wait_for("pod C's server followed", |m| metric(m, "inferscope_targets", &[]) == 3.0);
    load(port_c, 2, STREAM, "req-c1-");
    let before = [("service", "py-sse"), ("namespace", ""), ("pod", ""), ("container", &id_c[..12])];
    d.wait_for("pod C's requests with the cgroup's container ID", |m| requests(m, &before) == 2.0);
    api.put_pod(pod(uid_c, "chat", "py-chat-0", NODE, &[("app", "py-chat")], &[("api", &id_c)]));
    std::thread::sleep(Duration::from_millis(300));
    load(port_c, 2, STREAM, "req-c2-");
    let after = [("service", "py-chat"), ("namespace", "chat"), ("pod", "py-chat-0"), ("container", "api")];
    d.wait_for("pod C relabelled from its pod", |m| requests(m, &after) == 2.0);
    assert!(d.drain().iter().any(|l| l.contains("labelled from its pod") && l.contains("pod=py-chat-0")));

    // 4. The API goes away: the agent keeps measuring with the labels it knows, counts the
    //    errors, logs them at most once a minute, and is back when the API is.
    let errors0 = metric(&d.metrics(), "inferscope_kube_errors_total", &[]);
    api.stop();
    d.wait_for_within("watch errors while the API is down", Duration::from_secs(20), |m| {
        metric(m, "inferscope_kube_errors_total", &[]) >= errors0 + 2.0
            && metric(m, "inferscope_kube_watch_up", &[]) == 0.0
    });
    load(port_a, 3, STREAM, "req-a2-");
    d.wait_for("measured while the API is down", |m| requests(m, &pod_a) == 8.0);
    api.restart();
    // A change after it is back shows the watch is live again (a quiet watch has no events).
    api.put_pod(pod(uid_a, "serving", "tiny-llm-0", NODE, &[labels[0], labels[1], ("rev", "2")], &[("server", &id_a)]));
    let m = d.wait_for_within("watch up again", Duration::from_secs(40), |m| {
        metric(m, "inferscope_kube_watch_up", &[]) == 1.0 && metric(m, "inferscope_kube_pods", &[]) == 3.0
    });
    let errors = metric(&m, "inferscope_kube_errors_total", &[]) - errors0;
    let log = d.drain();
    let logged = log.iter().filter(|l| l.contains("Kubernetes API:")).count();
    eprintln!("API outage: {errors} errors counted, {logged} logged");
    assert!(logged >= 1 && (logged as f64) < errors, "errors logged rate-limited: {logged} lines for {errors} errors");
    assert!(log.iter().any(|l| l.contains("Kubernetes API answers again")), "{log:#?}");
    assert_eq!(metric(&m, "inferscope_kube_pods_dropped_total", &[]), 0.0);

    drop(srv_a);
    assert!(d.stop().success());
}

#[test]
fn without_a_cluster_it_says_why_once_and_measures() {
    let _serial = require_root();
    let dir = scratch_dir("kube-none");
    // A kubeconfig whose server is a port nothing listens on, and one for a running API with a
    // token it forbids (a service account without the ClusterRole).
    let mut gone = KubeApiStandin::start();
    gone.write_kubeconfig(&dir.join("gone-kubeconfig"));
    gone.stop();
    let api = KubeApiStandin::start();
    api.write_kubeconfig_as(&dir.join("forbidden-kubeconfig"), "not-allowed");
    struct Case<'a> {
        what: &'a str,
        config: &'a str,
        env: Vec<(&'a str, PathBuf)>,
        /// What the log says, once.
        says: &'a str,
        /// A cluster configuration was found: the watch runs and its errors are counted.
        watching: bool,
    }
    let node_and = |kubeconfig: &str| vec![("NODE_NAME", PathBuf::from(NODE)), ("KUBECONFIG", dir.join(kubeconfig))];
    let cases = [
        Case { what: "auto, no NODE_NAME", config: "", env: vec![], says: "NODE_NAME is not set", watching: false },
        Case {
            what: "on, no configuration",
            config: "kubernetes = \"on\"\n",
            env: vec![("KUBECONFIG", dir.join("missing"))],
            says: "no cluster configuration",
            watching: false,
        },
        Case {
            what: "API unreachable",
            config: "",
            env: node_and("gone-kubeconfig"),
            says: "Connection refused",
            watching: true,
        },
        Case {
            what: "no permission to list pods",
            config: "",
            env: node_and("forbidden-kubeconfig"),
            says: "pods is forbidden",
            watching: true,
        },
    ];
    for c in cases {
        let mut d = Daemon::start_with(&dir, &format!("{}{}", c.config, config()), &[], |cmd| {
            cmd.env_remove("NODE_NAME").env_remove("KUBECONFIG").env_remove("KUBERNETES_SERVICE_HOST");
            cmd.envs(c.env.iter().map(|(k, v)| (*k, v.as_os_str())));
        });
        d.wait_ready();
        let (py, port) = python_server(&dir, 1);
        d.wait_for("server followed", |m| metric(m, "inferscope_targets", &[]) == 1.0);
        load(port, 3, STREAM, "req-n-");
        let m = d.wait_for_within(c.what, Duration::from_secs(15), |m| {
            requests(m, &[("service", "py-sse"), ("pod", ""), ("namespace", "")]) == 3.0
                && (!c.watching || metric(m, "inferscope_kube_errors_total", &[]) >= 2.0)
        });
        assert_eq!(metric(&m, "inferscope_kube_watch_up", &[]), 0.0, "{}", c.what);
        let enabled = metric(&m, "inferscope_kube_metadata_enabled", &[]);
        assert_eq!(enabled, if c.watching { 1.0 } else { 0.0 }, "{}", c.what);
        let log = d.drain();
        let lines = log.iter().filter(|l| l.contains(c.says)).count();
        assert_eq!(lines, 1, "{}: said once why: {log:#?}", c.what);
        drop(py);
        assert!(d.stop().success(), "{}", c.what);
    }
}

#[test]
fn the_pod_map_is_bounded_and_listed_in_pages() {
    let _serial = require_root();
    let dir = scratch_dir("kube-many");
    let api = KubeApiStandin::start();
    for i in 0..250 {
        let uid = format!("{i:08x}-1111-4222-8333-444444444444");
        api.put_pod(pod(
            &uid,
            "batch",
            &format!("job-{i}"),
            NODE,
            &[("app", "job")],
            &[("main", &format!("{i:064x}"))],
        ));
    }
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let cfg = config().replace("kubernetes_max_pods = 16", "kubernetes_max_pods = 200");
    let mut d = Daemon::start_with(&dir, &cfg, &[], |cmd| {
        cmd.env("NODE_NAME", NODE).env("KUBECONFIG", &kubeconfig).env_remove("KUBERNETES_SERVICE_HOST");
    });
    d.wait_ready();
    let m = d.wait_for("the map full", |m| {
        metric(m, "inferscope_kube_watch_up", &[]) == 1.0 && metric(m, "inferscope_kube_pods", &[]) == 200.0
    });
    assert_eq!(metric(&m, "inferscope_kube_pods_dropped_total", &[]), 50.0, "what the cap refused is counted");
    let pages = api.requests().iter().filter(|r| r.contains(r#""continue""#)).count();
    assert!(pages >= 2, "250 pods listed in pages: {:#?}", api.requests());
    assert!(d.stop().success());
}
