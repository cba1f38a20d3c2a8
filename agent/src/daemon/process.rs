//! The agent's own series: `inferscope_build_info` and the standard `process_*` metrics of the
//! agent process (the names and meanings of the `prometheus` crate's `process` feature and of
//! the Go and Java clients). Read from `/proc/self` at each scrape, here: the crate's feature
//! pulls in `procfs` and `rustix` (not in this build's dependency set) for seven numbers.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGaugeVec, Opts, Registry};

/// The source revision baked in at build time: `INFERSCOPE_REVISION` if set, else the
/// checkout's commit, else `unknown` (build.rs).
pub const REVISION: &str = env!("INFERSCOPE_REVISION");

/// Registers `inferscope_build_info{version,revision,capture_mode}` = 1.
pub fn register_build_info(registry: &Registry, capture_mode: &str) {
    let info = IntGaugeVec::new(
        Opts::new("inferscope_build_info", "The agent's version, source revision and stream capture path; always 1"),
        &["version", "revision", "capture_mode"],
    )
    .unwrap_or_else(|e| panic!("inferscope_build_info: {e}"));
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION, capture_mode]).set(1);
    if let Err(e) = registry.register(Box::new(info)) {
        log::warn!("inferscope_build_info: {e}");
    }
}

/// `process_*` of the agent itself.
pub struct ProcessCollector {
    cpu_seconds: Counter,
    gauges: [(ProcessField, Gauge); 6],
    descs: Vec<Desc>,
}

#[derive(Clone, Copy)]
enum ProcessField {
    Resident,
    Virtual,
    OpenFds,
    MaxFds,
    Threads,
    StartTime,
}

/// What `/proc/self/stat` and friends say now.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub threads: f64,
    pub start_time_seconds: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let g = |name: &str, help: &str| Gauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cpu_seconds = Counter::new("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
            .unwrap_or_else(|e| panic!("process_cpu_seconds_total: {e}"));
        let gauges = [
            (ProcessField::Resident, g("process_resident_memory_bytes", "Resident memory size in bytes.")),
            (ProcessField::Virtual, g("process_virtual_memory_bytes", "Virtual memory size in bytes.")),
            (ProcessField::OpenFds, g("process_open_fds", "Number of open file descriptors.")),
            (ProcessField::MaxFds, g("process_max_fds", "Maximum number of open file descriptors.")),
            (ProcessField::Threads, g("process_threads", "Number of OS threads in the process.")),
            (
                ProcessField::StartTime,
                g("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
            ),
        ];
        let descs = std::iter::once(&cpu_seconds as &dyn Collector)
            .chain(gauges.iter().map(|(_, g)| g as &dyn Collector))
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Self { cpu_seconds, gauges, descs }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(s) = ProcessStats::read() else { return Vec::new() };
        // A counter only goes up: add what was spent since the last scrape.
        let spent = s.cpu_seconds - self.cpu_seconds.get();
        if spent > 0.0 {
            self.cpu_seconds.inc_by(spent);
        }
        let mut out = self.cpu_seconds.collect();
        for (field, g) in &self.gauges {
            g.set(match field {
                ProcessField::Resident => s.resident_bytes,
                ProcessField::Virtual => s.virtual_bytes,
                ProcessField::OpenFds => s.open_fds,
                ProcessField::MaxFds => s.max_fds,
                ProcessField::Threads => s.threads,
                ProcessField::StartTime => s.start_time_seconds,
            });
            out.extend(g.collect());
        }
        out
    }
}

impl ProcessStats {
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces), numbered as in proc(5) from 3.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        // SAFETY: sysconf and getrlimit only read process-wide constants / fill our struct.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above.
        let max_fds =
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur as f64 } else { 0.0 };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let ticks = ticks.max(1) as f64;
        Some(Self {
            cpu_seconds: (num(14)? + num(15)?) / ticks,
            threads: num(20)?,
            start_time_seconds: boot + num(22)? / ticks,
            virtual_bytes: num(23)?,
            resident_bytes: num(24)? * page.max(1) as f64,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64,
            max_fds,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_and_build_info_are_exported() {
        let registry = Registry::new();
        registry.register(Box::new(ProcessCollector::new())).unwrap();
        register_build_info(&registry, "socket");
        let _burn: u64 = (0..5_000_000u64).map(|i| i.wrapping_mul(i)).sum();
        let text = String::from_utf8(crate::daemon::metrics::encode(&registry)).unwrap();
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(start > now - 86_400.0 && start <= now + 1.0, "start {start} now {now}");
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                "inferscope_build_info{{capture_mode=\"socket\",revision=\"{REVISION}\",version=\"{version}\"}} 1"
            )),
            "{text}"
        );
        assert!(!REVISION.is_empty());
    }
}
