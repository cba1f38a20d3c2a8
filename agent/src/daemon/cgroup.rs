//! Container and pod identity from a process's cgroup path (`/proc/PID/cgroup`), for the shapes
//! containerd, CRI-O and Docker produce under cgroup v1 and v2, with the systemd and cgroupfs
//! drivers. No API call: this works outside a cluster too.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Full container id (64 hex characters).
    pub container_id: Option<String>,
    /// Pod UID in its canonical dashed form.
    pub pod_uid: Option<String>,
    /// `containerd`, `crio`, `docker`, or None when the runtime cannot be told.
    pub runtime: Option<&'static str>,
}

/// Parses the text of `/proc/PID/cgroup`: every line is `ID:CONTROLLERS:PATH`; the first line
/// that names a container wins (v1 repeats the same path for each controller).
pub fn parse(text: &str) -> CgroupInfo {
    let mut best = CgroupInfo::default();
    for line in text.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else { continue };
        let info = parse_path(path);
        if info.container_id.is_some() {
            return info;
        }
        if best.pod_uid.is_none() && info.pod_uid.is_some() {
            best = info;
        }
    }
    best
}

/// Reads and parses `/proc/PID/cgroup` (empty info if it cannot be read).
pub fn of_process(pid: u32) -> CgroupInfo {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|t| parse(&t)).unwrap_or_default()
}

pub fn parse_path(path: &str) -> CgroupInfo {
    let mut info = CgroupInfo::default();
    for seg in path.split('/') {
        if let Some(uid) = pod_uid(seg) {
            info.pod_uid = Some(uid);
            continue;
        }
        if let Some((id, runtime)) = container_id(seg) {
            info.container_id = Some(id);
            info.runtime = runtime;
        }
    }
    info
}

/// `pod<uid>` (cgroupfs, dashes) or `kubepods-<qos>-pod<uid>.slice` (systemd, underscores).
fn pod_uid(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let at = seg.rfind("pod")?;
    if at > 0 && !seg[..at].ends_with('-') {
        return None;
    }
    let raw = &seg[at + 3..];
    let uid = raw.replace('_', "-");
    let hex: String = uid.chars().filter(|c| *c != '-').collect();
    (hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) && uid.len() == 36).then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, or a bare 64-hex id
/// (cgroupfs driver, and Docker's v1 `/docker/<id>`). `crio-conmon-<id>` is CRI-O's monitor
/// process, not the container.
fn container_id(seg: &str) -> Option<(String, Option<&'static str>)> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    let (rest, runtime) = if let Some(r) = seg.strip_prefix("cri-containerd-") {
        (r, Some("containerd"))
    } else if let Some(r) = seg.strip_prefix("crio-") {
        if r.starts_with("conmon-") {
            return None;
        }
        (r, Some("crio"))
    } else if let Some(r) = seg.strip_prefix("docker-") {
        (r, Some("docker"))
    } else {
        (seg, None)
    };
    (rest.len() == 64 && rest.chars().all(|c| c.is_ascii_hexdigit())).then(|| (rest.to_string(), runtime))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ID: &str = "3f9c2a1b7e5d4c6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
    const UID: &str = "8d4b0a4e-6c3f-4b6a-9b8e-2f1d5c7a9e10";

    fn uid_underscored() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn containerd_cgroup_v2_systemd() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            uid_underscored()
        );
        let i = parse(&text);
        assert_eq!(i.container_id.as_deref(), Some(ID));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.runtime, Some("containerd"));
    }

    #[test]
    fn containerd_cgroup_v1_cgroupfs() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:memory:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        let i = parse(&text);
        assert_eq!((i.container_id.as_deref(), i.pod_uid.as_deref()), (Some(ID), Some(UID)));
        // Guaranteed QoS pods sit directly under kubepods.
        let i = parse_path(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!((i.container_id.as_deref(), i.pod_uid.as_deref()), (Some(ID), Some(UID)));
    }

    #[test]
    fn crio_cgroup_v2_and_its_conmon() {
        let base =
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice", uid_underscored());
        let i = parse(&format!("0::{base}/crio-{ID}.scope\n"));
        assert_eq!((i.container_id.as_deref(), i.runtime), (Some(ID), Some("crio")));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        let conmon = parse(&format!("0::{base}/crio-conmon-{ID}.scope\n"));
        assert_eq!(conmon.container_id, None, "the monitor is not the container");
        assert_eq!(conmon.pod_uid.as_deref(), Some(UID));
        // cgroup v1 with CRI-O and the systemd driver.
        let i =
            parse(&format!("4:cpu,cpuacct:/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope\n", uid_underscored()));
        assert_eq!((i.container_id.as_deref(), i.pod_uid.as_deref()), (Some(ID), Some(UID)));
    }

    #[test]
    fn docker_v1_and_v2() {
        let i = parse(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!((i.container_id.as_deref(), i.runtime, i.pod_uid.as_deref()), (Some(ID), Some("docker"), None));
        let i = parse(&format!("13:devices:/docker/{ID}\n"));
        assert_eq!(i.container_id.as_deref(), Some(ID));
        // kind / nested kubelet under a systemd slice.
        let i = parse(&format!(
            "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope\n",
            uid_underscored()
        ));
        assert_eq!((i.container_id.as_deref(), i.pod_uid.as_deref()), (Some(ID), Some(UID)));
    }

    #[test]
    fn host_processes_have_no_container() {
        for text in ["0::/user.slice/user-0.slice/session-3.scope\n", "0::/\n", "", "garbage", "0::/init.scope\n"] {
            assert_eq!(parse(text), CgroupInfo::default(), "{text:?}");
        }
        // A slice that merely contains "pod" is not a pod.
        assert_eq!(parse_path("/system.slice/podman.service").pod_uid, None);
    }
}
