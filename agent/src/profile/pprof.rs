//! Folded stacks as a pprof profile (`profile.proto`, gzipped): what `go tool pprof`, Pyroscope
//! and Parca read. One sample per (phase, stack), the phase as a label; frames are functions by
//! name (no addresses: symbolization already happened), the command name a label too.
//!
//! The message is small and fixed, so it is encoded here by hand (varints and length-delimited
//! fields) rather than through a protobuf code generator; field numbers are those of
//! `github.com/google/pprof/proto/profile.proto`.

use std::collections::HashMap;
use std::io::Write as _;

use super::fold::Folded;

/// How the samples were taken, for the profile's period and duration.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// CPU samples per second; `None` for off-CPU time (microseconds).
    pub hz: Option<u64>,
    /// Wall-clock start of the run (ns since the Unix epoch) and its length.
    pub start_unix_ns: i64,
    pub duration_ns: i64,
}

/// Protobuf wire encoding of the few types profile.proto uses.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    /// A varint field (int64/uint64), left out when 0 as proto3 does.
    fn int(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn message(&mut self, field: u32, build: impl FnOnce(&mut Pb)) {
        let mut m = Pb::default();
        build(&mut m);
        self.bytes(field, &m.0);
    }
    fn packed(&mut self, field: u32, vs: impl IntoIterator<Item = u64>) {
        let mut m = Pb::default();
        for v in vs {
            m.varint(v);
        }
        self.bytes(field, &m.0);
    }
}

/// The string table: index 0 is "" as the format requires.
#[derive(Default)]
struct Strings {
    index: HashMap<String, i64>,
    table: Vec<String>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.id("");
        s
    }
    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.index.insert(s.to_string(), i);
        self.table.push(s.to_string());
        i
    }
}

/// The uncompressed `Profile` message. Each frame name is one function and one location (ids
/// from 1, the same number for both); a sample lists its locations leaf first.
pub fn encode(folded: &Folded, sampling: Sampling) -> Vec<u8> {
    let mut strings = Strings::new();
    let mut out = Pb::default();
    let value_type = |out: &mut Pb, strings: &mut Strings, field, ty: &str, unit: &str| {
        let (t, u) = (strings.id(ty), strings.id(unit));
        out.message(field, |m| {
            m.int(1, t);
            m.int(2, u);
        });
    };
    let period_ns = sampling.hz.map(|hz| 1_000_000_000 / hz.max(1) as i64);
    match period_ns {
        Some(_) => {
            value_type(&mut out, &mut strings, 1, "samples", "count");
            value_type(&mut out, &mut strings, 1, "cpu", "nanoseconds");
        }
        None => value_type(&mut out, &mut strings, 1, "off_cpu", "microseconds"),
    }
    let (phase_key, comm_key) = (strings.id("phase"), strings.id("comm"));
    // Function/location id by frame name.
    let mut functions: HashMap<String, u64> = HashMap::new();
    let mut names: Vec<i64> = Vec::new();
    // "all" repeats every other phase's stacks: the phases alone, labelled, make the whole.
    let phases = folded.by_phase.iter().filter(|(p, _)| p.as_str() != "all" || folded.by_phase.len() == 1);
    for (phase, stacks) in phases {
        let phase_id = strings.id(phase);
        for (stack, &count) in stacks {
            let frames = stack.frames();
            let comm = if frames.is_empty() { 0 } else { strings.id(stack.frame(0)) };
            let mut locations = Vec::with_capacity(frames.len().saturating_sub(1));
            for i in (1..frames.len()).rev() {
                let name = stack.frame(i);
                let id = match functions.get(name) {
                    Some(&id) => id,
                    None => {
                        names.push(strings.id(name));
                        let id = names.len() as u64;
                        functions.insert(name.to_string(), id);
                        id
                    }
                };
                locations.push(id);
            }
            out.message(2, |m| {
                m.packed(1, locations.iter().copied());
                let values: Vec<u64> = match period_ns {
                    Some(p) => vec![count, count.saturating_mul(p as u64)],
                    None => vec![count],
                };
                m.packed(2, values);
                m.message(3, |l| {
                    l.int(1, phase_key);
                    l.int(2, phase_id);
                });
                if comm != 0 {
                    m.message(3, |l| {
                        l.int(1, comm_key);
                        l.int(2, comm);
                    });
                }
            });
        }
    }
    for id in 1..=names.len() as i64 {
        out.message(4, |m| {
            m.int(1, id);
            m.message(4, |line| line.int(1, id));
        });
    }
    for (i, &name) in names.iter().enumerate() {
        out.message(5, |m| {
            m.int(1, i as i64 + 1);
            m.int(2, name);
            m.int(3, name);
        });
    }
    // The period type and period fields follow the string table's users; strings last.
    let (period_type, period) = match period_ns {
        Some(p) => (("cpu", "nanoseconds"), p),
        None => (("off_cpu", "microseconds"), 1),
    };
    out.int(9, sampling.start_unix_ns);
    out.int(10, sampling.duration_ns);
    value_type(&mut out, &mut strings, 11, period_type.0, period_type.1);
    out.int(12, period);
    for s in &strings.table {
        out.bytes(6, s.as_bytes());
    }
    out.0
}

/// `encode`'s message gzipped, as pprof files and uploads are.
pub fn gzipped(folded: &Folded, sampling: Sampling) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&encode(folded, sampling));
    gz.finish().unwrap_or_default()
}

/// Writes `encode`'s message gzipped, as pprof files are.
pub fn write(path: &std::path::Path, folded: &Folded, sampling: Sampling) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    gz.write_all(&encode(folded, sampling))?;
    gz.finish()?.flush()?;
    Ok(())
}
