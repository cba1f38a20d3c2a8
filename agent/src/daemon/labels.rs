//! A followed process's labels: from its rule, its cgroup (container ID, pod UID) and, in a
//! cluster, the pod that UID names. The pod map is written by the kube watcher on its own thread
//! (`kube`); this part reads it, and tells the loop when it changed so targets are labelled again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cgroup::CgroupInfo;
use super::config::{Config, Rule};
use super::kube::{PodIndex, PodRecord};
use super::metrics::TargetLabels;

/// How long the start waits for the first pod list, so existing processes get their pod labels
/// at once instead of being labelled twice.
const FIRST_POD_LIST_WAIT: Duration = Duration::from_secs(3);

pub struct Labels {
    /// This node's pods from the Kubernetes API (empty outside a cluster).
    pods: Arc<PodIndex>,
    /// The pod map's generation the targets were last labelled with.
    seen: u64,
}

impl Labels {
    /// No pod metadata (until [`start`](Self::start)).
    pub fn none() -> Self {
        Self { pods: Arc::new(PodIndex::new(1)), seen: 0 }
    }

    /// Starts the pod watcher on its own thread (the loop only reads its map) and waits a little
    /// for its first list.
    pub async fn start(cfg: &Config) -> Self {
        let pods = super::kube::start(cfg);
        let t0 = Instant::now();
        while pods.starting() && t0.elapsed() < FIRST_POD_LIST_WAIT {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = pods.generation();
        Self { pods, seen }
    }

    pub fn pods(&self) -> &PodIndex {
        &self.pods
    }

    /// The API's record of the pod a process's cgroup names.
    pub fn pod_of(&self, cg: &CgroupInfo) -> Option<Arc<PodRecord>> {
        cg.pod_uid.as_deref().and_then(|uid| self.pods.get(uid))
    }

    /// The labels of a process `rule` matched, in cgroup `cg`, with what the API knows now.
    pub fn of(&self, rule: &Rule, cg: &CgroupInfo) -> TargetLabels {
        target_labels(rule, cg, self.pod_of(cg).as_deref())
    }

    /// New labels for a followed process when its pod's record gives other ones. A pod gone from
    /// the API (deleted, or the map was full) leaves the labels as they were.
    pub fn update(&self, rule: &Rule, cg: &CgroupInfo, current: &TargetLabels) -> Option<TargetLabels> {
        let pod = self.pod_of(cg)?;
        let labels = target_labels(rule, cg, Some(&pod));
        (labels != *current).then_some(labels)
    }

    /// Whether the pod map changed since the last call that said so.
    pub fn changed(&mut self) -> bool {
        let generation = self.pods.generation();
        let changed = generation != self.seen;
        self.seen = generation;
        changed
    }
}

/// A target's labels: `service` from the rule, else the pod's app name, else the rule's name;
/// namespace, pod and container name from the pod record; outside a cluster (or before the API
/// told about the pod) only `container`, as the short container ID from the cgroup.
fn target_labels(rule: &Rule, cg: &CgroupInfo, pod: Option<&PodRecord>) -> TargetLabels {
    let short_id = cg.container_id.as_deref().map(|c| c[..c.len().min(12)].to_string()).unwrap_or_default();
    let service = if !rule.service.is_empty() {
        rule.service.clone()
    } else {
        pod.and_then(PodRecord::app_name).unwrap_or(&rule.name).to_string()
    };
    match pod {
        Some(p) => TargetLabels {
            service,
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            container: cg.container_id.as_deref().and_then(|c| p.containers.get(c)).cloned().unwrap_or(short_id),
        },
        None => TargetLabels { service, namespace: String::new(), pod: String::new(), container: short_id },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ID: &str = "3f9c2a1b7e5d4c6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

    #[test]
    fn labels_from_rule_cgroup_and_pod() {
        let rule = Rule { name: "llama.cpp".into(), ..Default::default() };
        let cg = CgroupInfo { container_id: Some(ID.into()), pod_uid: Some("u".into()), runtime: None };
        // Outside a cluster, or before the API told about the pod: the short container ID only.
        let l = target_labels(&rule, &cg, None);
        assert_eq!(
            (l.service.as_str(), l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("llama.cpp", "", "", &ID[..12])
        );
        assert_eq!(target_labels(&rule, &CgroupInfo::default(), None).container, "", "a host process");
        let mut pod = PodRecord {
            namespace: "serving".into(),
            name: "llm-0".into(),
            labels: [("app".to_string(), "chat".to_string())].into(),
            containers: [(ID.to_string(), "server".to_string())].into(),
        };
        let l = target_labels(&rule, &cg, Some(&pod));
        assert_eq!(
            (l.service.as_str(), l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("chat", "serving", "llm-0", "server")
        );
        pod.labels.insert("app.kubernetes.io/name".into(), "llama".into());
        assert_eq!(target_labels(&rule, &cg, Some(&pod)).service, "llama", "app.kubernetes.io/name first");
        let named = Rule { service: "svc".into(), ..rule.clone() };
        assert_eq!(target_labels(&named, &cg, Some(&pod)).service, "svc", "the rule's service wins");
        // The pod is known, its container's status not yet: the short ID until it is.
        pod.containers.clear();
        assert_eq!(target_labels(&rule, &cg, Some(&pod)).container, &ID[..12]);
    }
}
