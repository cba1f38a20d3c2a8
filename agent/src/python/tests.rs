#![allow(clippy::unwrap_used)]

use agent_common::python::{frame_flag::ENTRY, PyFrame, NO_CFRAME, NO_FIELD};

use super::layout::{PY311, PY312, PY313};
use super::symbolize::frame_name;
use super::*;

fn f(code: u64, flags: u32) -> PyFrame {
    PyFrame { code, instr: 0, flags }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn groups_split_at_entry_frames() {
    // leaf first: 5 4 | 3 2 (entry) | 1 (entry)
    let g = eval_groups(&[f(5, 0), f(4, ENTRY), f(3, 0), f(2, ENTRY), f(1, ENTRY)]);
    let codes: Vec<Vec<u64>> = g.iter().map(|g| g.iter().map(|f| f.code).collect()).collect();
    assert_eq!(codes, vec![vec![1], vec![2, 3], vec![4, 5]]);
    assert!(eval_groups(&[]).is_empty());
    // No entry mark (truncated walk): one group.
    assert_eq!(eval_groups(&[f(2, 0), f(1, 0)]).len(), 1);
}

#[test]
fn python_frames_replace_eval_frames_from_the_root() {
    let native = names(&["main", EVAL_FRAME, "call", EVAL_FRAME, "leaf_c"]);
    let groups = vec![names(&["a.main"]), names(&["a.f", "a.g"])];
    assert_eq!(merge(native, groups, true), names(&["main", "a.main", "call", "a.f", "a.g", "leaf_c"]));
}

#[test]
fn unpaired_frames_stay_and_extra_groups_go_next_to_the_nearest() {
    // An eval call that has not pushed its frame yet (innermost eval frame without a group).
    let native = names(&["main", EVAL_FRAME, "call", EVAL_FRAME]);
    assert_eq!(merge(native.clone(), vec![names(&["a.main"])], true), names(&["main", "a.main", "call", EVAL_FRAME]));
    // Native root missing: pair from the leaf; the extra outer group goes with the first paired.
    let native = names(&[EVAL_FRAME, "call", EVAL_FRAME]);
    let groups = vec![names(&["a.outer"]), names(&["a.mid"]), names(&["a.inner"])];
    assert_eq!(merge(native, groups, false), names(&["a.outer", "a.mid", "call", "a.inner"]));
    // No eval frame found: Python frames on top.
    assert_eq!(merge(names(&["x"]), vec![names(&["a.f"])], true), names(&["x", "a.f"]));
    assert_eq!(merge(names(&["x"]), vec![], true), names(&["x"]));
}

#[test]
fn frame_names() {
    assert_eq!(frame_name("Burner.spin", "/tmp/app/work.py", 12), "work.Burner.spin (work.py:12)");
    assert_eq!(frame_name("f", "/x/pkg/__init__.py", 3), "pkg.f (__init__.py:3)");
    assert_eq!(frame_name("_run_module_as_main", "<frozen runpy>", 1), "runpy._run_module_as_main (<frozen runpy>:1)");
    assert_eq!(frame_name("a;b", "m.py", 1), "m.a:b (m.py:1)");
}

#[test]
fn versions_without_a_layout_say_which_are_supported() {
    assert!(layout_for(3, 10).unwrap_err().contains("3.11, 3.12 and 3.13"));
    assert_eq!(layout_for(3, 12).unwrap().minor, 12);
}

/// The layout tables against the interpreters' own headers: a C program prints `offsetof` of
/// every field we use, compiled against each pyenv version's headers that is installed (CI's
/// machine image has pyenv with 3.11–3.13; Debian's python3.11-dev headers too).
#[test]
fn layouts_match_the_headers() {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut checked = 0;
    for (layout, dir) in [
        (&PY311, format!("{home}/.pyenv/versions/3.11.7/include/python3.11")),
        (&PY311, "/usr/include/python3.11".to_string()),
        (&PY312, format!("{home}/.pyenv/versions/3.12.1/include/python3.12")),
        (&PY313, format!("{home}/.pyenv/versions/3.13.0/include/python3.13")),
    ] {
        if !std::path::Path::new(&dir).join("internal/pycore_frame.h").exists() {
            eprintln!("{dir}: headers not installed, not checked");
            continue;
        }
        let Some(got) = header_offsets(&dir) else {
            eprintln!("{dir}: no C compiler, not checked");
            continue;
        };
        let w = &layout.walk;
        let cframe = if w.cframe_current_frame == NO_CFRAME { None } else { Some(w.cframe_current_frame as u64) };
        let is_entry = if w.frame_is_entry == NO_FIELD { None } else { Some(w.frame_is_entry as u64) };
        let want: Vec<(&str, Option<u64>)> = vec![
            ("runtime_interpreters_head", Some(layout.runtime_interpreters_head)),
            ("interp_threads_head", Some(w.interp_threads_head as u64)),
            ("tstate_next", Some(w.tstate_next as u64)),
            ("tstate_thread_id", Some(w.tstate_thread_id as u64)),
            ("tstate_frame", Some(w.tstate_frame as u64)),
            ("cframe_current_frame", cframe),
            ("frame_code", Some(w.frame_code as u64)),
            ("frame_instr", Some(w.frame_instr as u64)),
            ("frame_previous", Some(w.frame_previous as u64)),
            ("frame_owner", Some(w.frame_owner as u64)),
            ("frame_is_entry", is_entry),
            ("code_filename", Some(layout.code_filename)),
            ("code_qualname", Some(layout.code_qualname)),
            ("code_firstlineno", Some(layout.code_firstlineno)),
            ("code_adaptive", Some(layout.code_adaptive)),
            ("ascii_size", Some(layout.ascii_size)),
            ("compact_size", Some(layout.compact_size)),
            ("unicode_length", Some(16)),
            ("unicode_state", Some(32)),
        ];
        for (field, value) in want {
            assert_eq!(got.get(field).copied(), value, "{dir}: {field}");
        }
        checked += 1;
    }
    eprintln!("{checked} header sets checked");
}

const OFFSETS_C: &str = r#"
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include "internal/pycore_runtime.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_frame.h"
#define P(name, expr) printf("%s %zu\n", name, (size_t)(expr))
int main(void) {
  P("runtime_interpreters_head", offsetof(_PyRuntimeState, interpreters.head));
  P("interp_threads_head", offsetof(PyInterpreterState, threads.head));
  P("tstate_next", offsetof(PyThreadState, next));
  P("tstate_thread_id", offsetof(PyThreadState, thread_id));
#if PY_VERSION_HEX >= 0x030D0000
  P("tstate_frame", offsetof(PyThreadState, current_frame));
  P("frame_code", offsetof(_PyInterpreterFrame, f_executable));
  P("frame_instr", offsetof(_PyInterpreterFrame, instr_ptr));
#else
  P("tstate_frame", offsetof(PyThreadState, cframe));
  P("cframe_current_frame", offsetof(_PyCFrame, current_frame));
  P("frame_code", offsetof(_PyInterpreterFrame, f_code));
  P("frame_instr", offsetof(_PyInterpreterFrame, prev_instr));
#endif
  P("frame_previous", offsetof(_PyInterpreterFrame, previous));
  P("frame_owner", offsetof(_PyInterpreterFrame, owner));
#if PY_VERSION_HEX < 0x030C0000
  P("frame_is_entry", offsetof(_PyInterpreterFrame, is_entry));
#endif
  P("code_filename", offsetof(PyCodeObject, co_filename));
  P("code_qualname", offsetof(PyCodeObject, co_qualname));
  P("code_firstlineno", offsetof(PyCodeObject, co_firstlineno));
  P("code_adaptive", offsetof(PyCodeObject, co_code_adaptive));
  P("ascii_size", sizeof(PyASCIIObject));
  P("compact_size", sizeof(PyCompactUnicodeObject));
  P("unicode_length", offsetof(PyASCIIObject, length));
  P("unicode_state", offsetof(PyASCIIObject, state));
  return 0;
}
"#;

fn header_offsets(include: &str) -> Option<std::collections::HashMap<String, u64>> {
    let dir = std::env::temp_dir().join(format!("inferscope-pyoff-{}-{}", std::process::id(), include.len()));
    std::fs::create_dir_all(&dir).ok()?;
    let src = dir.join("off.c");
    let exe = dir.join("off");
    std::fs::write(&src, OFFSETS_C).ok()?;
    let built = std::process::Command::new("cc")
        .arg(format!("-I{include}"))
        .arg(format!("-I{include}/internal"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .ok()?;
    assert!(built.success(), "the offsets program did not compile against {include}");
    let out = std::process::Command::new(&exe).output().ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
            .collect(),
    )
}
