//! Test fixtures: real ELF files compiled with the system `cc`/`c++`, and cross-checks against
//! binutils (`readelf`, `nm`), so the parser is compared with the reference tools, not with itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Found in the test binary by its demangled path; `inline(never)` keeps it a real function.
#[inline(never)]
pub fn marker_function_for_symbols_test() -> usize {
    std::hint::black_box(42)
}

const C_SOURCE: &str = r#"
#include <string.h>
__attribute__((noinline, used)) static int helper_static(int x) { return x * 3 + 1; }
__attribute__((noinline)) int llama_decode(int n) { return helper_static(n) + 7; }
__attribute__((noinline)) int llama_encode(int n) { return helper_static(n) - 7; }
__attribute__((noinline)) int llama_tokenize(const char *s) { return (int)strlen(s); }
int main(int argc, char **argv) { return llama_decode(argc) + llama_encode(argc) + llama_tokenize(argv[0]); }
"#;

const CPP_SOURCE: &str = r#"
namespace ns {
__attribute__((noinline)) int tokenize(int x) { return x * 2; }
struct Tokenizer { int count(const char *s) const; };
__attribute__((noinline)) int Tokenizer::count(const char *s) const { int n = 0; while (*s++) n++; return n; }
}
int main(int argc, char **argv) { ns::Tokenizer t; return ns::tokenize(argc) + t.count(argv[0]); }
"#;

const FAKE_GO_SOURCE: &str = r#"
__attribute__((section(".gopclntab"), used)) static const char pclntab[16] = "not really go";
int main(void) { return 0; }
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FixtureKind {
    Pie,
    NoPie,
    Shared,
    StrippedPie,
    StrippedShared,
    Cpp,
    FakeGo,
}

pub struct Fixture {
    pub path: PathBuf,
}

const DIR_PREFIX: &str = "inferscope-symbols-";

/// A fresh directory per test process (tests in one process share fixtures).
pub fn temp_dir(tag: &str) -> PathBuf {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(sweep_dead_runs);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id())).join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Tests cannot clean up after themselves (no hook runs after the last one), so each run removes
/// the directories of earlier runs whose process is gone.
fn sweep_dead_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (install gcc/g++ and binutils)"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Fixture {
    /// Compiles (once per test process) and returns the fixture of this kind.
    pub fn build(kind: FixtureKind) -> Fixture {
        static BUILT: OnceLock<Mutex<HashMap<FixtureKind, PathBuf>>> = OnceLock::new();
        let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let path = built.entry(kind).or_insert_with(|| compile(kind)).clone();
        Fixture { path }
    }

    /// (st_value, st_size) of a FUNC symbol, as readelf prints it.
    pub fn readelf_symbol(&self, name: &str) -> Option<(u64, u64)> {
        let out = run(Command::new("readelf").args(["-sW"]).arg(&self.path));
        out.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num: Value Size Type Bind Vis Ndx Name
            if f.len() < 8 || f[3] != "FUNC" || f[7].split('@').next() != Some(name) {
                return None;
            }
            let size = match f[2].strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None => f[2].parse().ok()?,
            };
            Some((u64::from_str_radix(f[1], 16).ok()?, size))
        })
    }

    /// File offset of `vaddr` computed from readelf's program headers.
    pub fn readelf_file_offset(&self, vaddr: u64) -> u64 {
        let out = run(Command::new("readelf").args(["-lW"]).arg(&self.path));
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        for line in out.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // LOAD Offset VirtAddr PhysAddr FileSiz MemSiz Flg Align
            if f.first() == Some(&"LOAD") {
                let (offset, va, filesz) = (hex(f[1]), hex(f[2]), hex(f[4]));
                if vaddr >= va && vaddr < va + filesz {
                    return vaddr - va + offset;
                }
            }
        }
        panic!("{vaddr:#x} is in no LOAD segment of {:?}", self.path);
    }

    /// Defined functions in .dynsym, as `nm -D` lists them.
    pub fn nm_dynamic_functions(&self) -> Vec<(String, u64)> {
        let out = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&self.path));
        out.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() != 3 || !matches!(f[1], "T" | "t" | "i" | "W") {
                    return None;
                }
                let name = f[2].split('@').next()?.to_string();
                Some((name, u64::from_str_radix(f[0], 16).ok()?))
            })
            .collect()
    }
}

fn compile(kind: FixtureKind) -> PathBuf {
    let dir = temp_dir("fixtures");
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let c = write("fixture.c", C_SOURCE);
    let out = dir.join(format!("{kind:?}"));
    let cc = |args: &[&str], src: &Path, compiler: &str| {
        run(Command::new(compiler).args(["-O1", "-g0", "-o"]).arg(&out).args(args).arg(src));
    };
    match kind {
        FixtureKind::Pie | FixtureKind::StrippedPie => cc(&["-fPIE", "-pie"], &c, "cc"),
        FixtureKind::NoPie => cc(&["-fno-PIE", "-no-pie"], &c, "cc"),
        FixtureKind::Shared | FixtureKind::StrippedShared => cc(&["-shared", "-fPIC"], &c, "cc"),
        FixtureKind::Cpp => cc(&[], &write("fixture.cpp", CPP_SOURCE), "c++"),
        FixtureKind::FakeGo => cc(&[], &write("fakego.c", FAKE_GO_SOURCE), "cc"),
    }
    if matches!(kind, FixtureKind::StrippedPie | FixtureKind::StrippedShared) {
        run(Command::new("strip").arg("--strip-all").arg(&out));
    }
    out
}
