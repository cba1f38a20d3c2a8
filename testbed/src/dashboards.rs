//! Structural checks of the Grafana dashboards in `dashboards/`, and their queries with the template
//! variables filled in, for tests that run them against a real Prometheus.
//!
//! * [`load_dir`] / [`load_dir_named`] — every `*.json` file of a directory, parsed, by file name.
//! * [`check_structure`] — what Grafana needs to import them and what every query relies on.
//! * [`panel_queries`] — every target expression with `$var`, `${var}` and `${var:format}` replaced.
//! * [`metric_names`] — the metric names a PromQL expression selects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

/// The datasource reference every panel and target must carry.
pub const DATASOURCE_UID: &str = "${datasource}";

/// Grafana's built-in variables the dashboards may use, and what [`panel_queries`] puts in their
/// place when the caller's map has no value for them.
pub const BUILTIN_VARS: &[(&str, &str)] = &[("__rate_interval", "1m"), ("__interval", "1m"), ("__range", "1h")];

/// One query of one panel, variables substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    /// The name the dashboard was given under (its file name for [`load_dir_named`]).
    pub dashboard: String,
    /// The panel title, as written (a repeated panel keeps its `$var`).
    pub panel: String,
    pub expr: String,
}

/// Every `*.json` file directly in `dir`, parsed, in file-name order.
pub fn load_dir(dir: &Path) -> Result<Vec<Value>, String> {
    Ok(load_dir_named(dir)?.into_iter().map(|(_, v)| v).collect())
}

/// Like [`load_dir`], with each dashboard's file name (`inferscope-serving.json`), the form
/// [`check_structure`] and [`panel_queries`] take.
pub fn load_dir_named(dir: &Path) -> Result<Vec<(String, Value)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((name, value))
        })
        .collect()
}

/// Every panel of a dashboard, those nested in (collapsed) rows included, rows themselves included.
pub fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for panel in panels.and_then(Value::as_array).into_iter().flatten() {
            out.push(panel);
            walk(panel.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

fn targets(panel: &Value) -> &[Value] {
    panel.get("targets").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn variables(dashboard: &Value) -> &[Value] {
    dashboard.pointer("/templating/list").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A query variable's query text: a string, or the editor's `{"query": "..."}` object.
fn variable_query(var: &Value) -> Option<&str> {
    match var.get("query") {
        Some(Value::String(s)) => Some(s),
        Some(obj @ Value::Object(_)) => str_of(obj, "query"),
        _ => None,
    }
}

fn panel_label(panel: &Value) -> String {
    let title = str_of(panel, "title").unwrap_or("");
    match panel.get("id") {
        Some(id) => format!("panel {id} {title:?}"),
        None => format!("panel {title:?}"),
    }
}

/// The variable names an expression refers to: `$name`, `${name}` and `${name:format}`.
pub fn referenced_vars(expr: &str) -> Vec<String> {
    substitute(expr, &mut |name, _| Some(format!("${{{name}}}"))).1
}

/// Replaces each variable reference with `value(name, format)`, or leaves it when that is `None`.
/// Returns the new text and the names met, in order.
fn substitute(expr: &str, value: &mut dyn FnMut(&str, Option<&str>) -> Option<String>) -> (String, Vec<String>) {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(expr.len());
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (name, format, len) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => {
                    let body = &inner[..end];
                    let (name, format) = match body.split_once(':') {
                        Some((n, f)) => (n, Some(f)),
                        None => (body, None),
                    };
                    (name, format, end + 2)
                }
                None => ("", None, 0),
            }
        } else {
            let end = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
            (&after[..end], None, end)
        };
        if name.is_empty() || !name.chars().all(is_ident) {
            out.push('$');
            rest = after;
            continue;
        }
        names.push(name.to_string());
        match value(name, format) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[pos..pos + 1 + len]),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    (out, names)
}

/// Problems that would stop a dashboard importing or a query running; empty when there are none.
///
/// Checks: a title, a schemaVersion and a uid unique across all files; panel ids unique within
/// a dashboard (panels nested in rows included); a `datasource` variable of type `datasource`;
/// every panel (rows without targets excepted), target and query variable uses the Prometheus
/// datasource `${datasource}`; every target has a non-empty `expr`; every variable an expression
/// or a variable query uses is defined in the dashboard or a Grafana builtin.
pub fn check_structure(dashboards: &[(String, Value)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut uids: HashMap<String, &str> = HashMap::new();
    for (file, dash) in dashboards {
        let mut problem = |msg: String| problems.push(format!("{file}: {msg}"));
        if !dash.is_object() {
            problem("not a JSON object".into());
            continue;
        }
        if str_of(dash, "title").is_none_or(|t| t.trim().is_empty()) {
            problem("no title".into());
        }
        if !dash.get("schemaVersion").is_some_and(Value::is_u64) {
            problem("no numeric schemaVersion".into());
        }
        match str_of(dash, "uid") {
            None | Some("") => problem("no uid".into()),
            Some(uid) => {
                if let Some(other) = uids.insert(uid.to_string(), file) {
                    problem(format!("uid {uid:?} is also the uid of {other}"));
                }
            }
        }

        // Variables.
        let mut defined: HashSet<String> = BUILTIN_VARS.iter().map(|(n, _)| n.to_string()).collect();
        let mut has_datasource_var = false;
        for var in variables(dash) {
            let Some(name) = str_of(var, "name").filter(|n| !n.is_empty()) else {
                problem("a template variable has no name".into());
                continue;
            };
            if !defined.insert(name.to_string()) && !BUILTIN_VARS.iter().any(|(b, _)| *b == name) {
                problem(format!("variable {name:?} is defined twice"));
            }
            let kind = str_of(var, "type").unwrap_or("");
            if name == "datasource" {
                if kind == "datasource" && str_of(var, "query") == Some("prometheus") {
                    has_datasource_var = true;
                } else {
                    problem("variable \"datasource\" is not of type datasource with query prometheus".into());
                }
            }
        }
        if !has_datasource_var {
            problem("no \"datasource\" template variable".into());
        }
        for var in variables(dash).iter().filter(|v| str_of(v, "type") == Some("query")) {
            let name = str_of(var, "name").unwrap_or("");
            check_datasource(var.get("datasource"), &format!("variable {name:?}"), &mut problem);
            match variable_query(var) {
                Some(q) if !q.trim().is_empty() => {
                    for used in referenced_vars(q) {
                        if !defined.contains(&used) {
                            problem(format!("variable {name:?} uses undefined ${used}"));
                        }
                    }
                }
                _ => problem(format!("variable {name:?} has no query")),
            }
        }

        // Panels.
        let panels = all_panels(dash);
        if panels.is_empty() {
            problem("no panels".into());
        }
        let mut ids = HashSet::new();
        for panel in &panels {
            let label = panel_label(panel);
            match panel.get("id").and_then(Value::as_u64) {
                Some(id) => {
                    if !ids.insert(id) {
                        problem(format!("{label}: id {id} is used twice"));
                    }
                }
                None => problem(format!("{label}: no numeric id")),
            }
            if str_of(panel, "type").is_none() {
                problem(format!("{label}: no type"));
            }
            let is_row = str_of(panel, "type") == Some("row");
            if !is_row || panel.get("datasource").is_some() || !targets(panel).is_empty() {
                check_datasource(panel.get("datasource"), &label, &mut problem);
            }
            if let Some(repeat) = str_of(panel, "repeat").filter(|r| !r.is_empty()) {
                if !defined.contains(repeat) {
                    problem(format!("{label}: repeats over undefined variable {repeat:?}"));
                }
            }
            for (i, target) in targets(panel).iter().enumerate() {
                let tlabel = format!("{label} target {}", str_of(target, "refId").unwrap_or(&i.to_string()));
                check_datasource(target.get("datasource"), &tlabel, &mut problem);
                match str_of(target, "expr") {
                    Some(expr) if !expr.trim().is_empty() => {
                        for used in referenced_vars(expr) {
                            if !defined.contains(&used) {
                                problem(format!("{tlabel}: uses undefined ${used}"));
                            }
                        }
                    }
                    _ => problem(format!("{tlabel}: no expr")),
                }
            }
        }
    }
    problems
}

fn check_datasource(ds: Option<&Value>, label: &str, problem: &mut dyn FnMut(String)) {
    let ok = ds.is_some_and(|ds| {
        str_of(ds, "uid") == Some(DATASOURCE_UID) && str_of(ds, "type").is_none_or(|t| t == "prometheus")
    });
    if !ok {
        let found = ds.map_or("nothing".to_string(), Value::to_string);
        problem(format!(
            "{label}: datasource is {found}, not {{\"type\":\"prometheus\",\"uid\":\"{DATASOURCE_UID}\"}}"
        ));
    }
}

/// Every target expression of every panel, in dashboard then panel order, with variables replaced.
///
/// A variable takes its value from `vars` (used as written, whatever the `${var:format}`: give
/// regexes for `=~` matchers), else its `allValue` in the dashboard (`.*` here), else, for a
/// builtin, [`BUILTIN_VARS`] (`$__rate_interval` = `1m`). References to anything else stay as they
/// are. Targets without an expression are skipped.
pub fn panel_queries(dashboards: &[(String, Value)], vars: &BTreeMap<String, String>) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for (name, dash) in dashboards {
        let all_values: HashMap<&str, &str> = variables(dash)
            .iter()
            .filter_map(|v| Some((str_of(v, "name")?, str_of(v, "allValue").filter(|a| !a.is_empty())?)))
            .collect();
        let mut value = |var: &str, _format: Option<&str>| -> Option<String> {
            if let Some(v) = vars.get(var) {
                return Some(v.clone());
            }
            if let Some(v) = all_values.get(var) {
                return Some(v.to_string());
            }
            BUILTIN_VARS.iter().find(|(b, _)| *b == var).map(|(_, v)| v.to_string())
        };
        for panel in all_panels(dash) {
            for target in targets(panel) {
                let Some(expr) = str_of(target, "expr").filter(|e| !e.trim().is_empty()) else { continue };
                out.push(PanelQuery {
                    dashboard: name.clone(),
                    panel: str_of(panel, "title").unwrap_or("").to_string(),
                    expr: substitute(expr, &mut value).0,
                });
            }
        }
    }
    out
}

/// The metric names a PromQL expression selects (`rate(x_bucket{..}[5m])` gives `x_bucket`).
///
/// A small scanner, not a parser: it drops string literals, label matchers `{...}`, ranges and
/// subqueries `[...]`, and the label lists after `by`, `without`, `on`, `ignoring`, `group_left`
/// and `group_right`; what is left that looks like an identifier, is not followed by `(` and is
/// not a keyword is a metric name. Enough for the dashboards' expressions; `{__name__=~...}`
/// selectors are not seen.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] =
        &["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // Index just past the string literal that starts at `i`.
    let skip_string = |i: usize| {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' && quote != '`' { 2 } else { 1 };
        }
        (j + 1).min(chars.len())
    };
    // Index just past the bracket that closes the one at `i` (string literals inside skipped).
    let close = |i: usize, open: char, shut: char| {
        let (mut depth, mut j) = (0usize, i);
        while j < chars.len() {
            let c = chars[j];
            if c == '"' || c == '\'' || c == '`' {
                j = skip_string(j);
                continue;
            }
            if c == open {
                depth += 1;
            } else if c == shut {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        chars.len()
    };
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
            continue;
        }
        if c == '{' {
            i = close(i, '{', '}');
            continue;
        }
        if c == '[' {
            i = close(i, '[', ']');
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number (1, 0.99, 1e-9, 0x1f): skip it with any letters glued to it.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = close(next, '(', ')');
                }
                continue;
            }
            // `sum by (le) (...)`: an aggregation with its grouping first.
            let next_word: String = chars[next..].iter().take_while(|&&c| ident_char(c)).collect();
            let aggregation = next_word == "by" || next_word == "without";
            if KEYWORDS.contains(&word.as_str()) || chars.get(next) == Some(&'(') || aggregation {
                continue;
            }
            names.insert(word);
            continue;
        }
        i += 1;
    }
    names
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds() -> Value {
        json!({"type": "prometheus", "uid": "${datasource}"})
    }

    fn good(uid: &str) -> Value {
        json!({
            "title": "t", "uid": uid, "schemaVersion": 39,
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "service", "type": "query", "datasource": ds(), "allValue": ".*",
                 "query": {"query": "label_values(m_total, service)"}},
                {"name": "pod", "type": "query", "datasource": ds(), "allValue": ".*",
                 "query": "label_values(m_total{service=~\"$service\"}, pod)"},
            ]},
            "panels": [
                {"id": 1, "type": "timeseries", "title": "a", "datasource": ds(), "targets": [
                    {"refId": "A", "datasource": ds(),
                     "expr": "sum by (le) (rate(m_bucket{service=~\"$service\", pod=~\"${pod:regex}\"}[$__rate_interval]))"}
                ]},
                {"id": 2, "type": "row", "title": "r", "collapsed": true, "panels": [
                    {"id": 3, "type": "stat", "title": "b", "datasource": ds(), "targets": [
                        {"refId": "A", "datasource": ds(), "expr": "sum(increase(m_total{pod=~\"$pod\"}[$__range]))"}
                    ]}
                ]}
            ]
        })
    }

    fn named(v: Vec<Value>) -> Vec<(String, Value)> {
        v.into_iter().enumerate().map(|(i, d)| (format!("d{i}.json"), d)).collect()
    }

    #[test]
    fn a_good_dashboard_has_no_problems() {
        assert_eq!(check_structure(&named(vec![good("a"), good("b")])), Vec::<String>::new());
    }

    #[test]
    fn finds_each_kind_of_problem() {
        let mut d = good("a");
        d["title"] = json!("");
        d.as_object_mut().unwrap().remove("schemaVersion");
        d["panels"][1]["panels"][0]["id"] = json!(1); // duplicate, nested
        d["panels"][0]["targets"][0]["datasource"]["uid"] = json!("prom-uid");
        d["panels"][1]["panels"][0]["datasource"] = json!("Prometheus");
        d["panels"][1]["panels"][0]["targets"][0]["expr"] = json!("  ");
        d["panels"][0]["targets"][0]["expr"] = json!("up{job=~\"$job\", x=~\"${nope:pipe}\"}[$__interval]");
        let problems = check_structure(&named(vec![d, good("a")]));
        let has = |s: &str| problems.iter().any(|p| p.contains(s));
        assert!(has("no title"), "{problems:?}");
        assert!(has("schemaVersion"), "{problems:?}");
        assert!(has("id 1 is used twice"), "{problems:?}");
        assert!(has("prom-uid"), "{problems:?}");
        assert!(has("datasource is \"Prometheus\""), "{problems:?}");
        assert!(has("no expr"), "{problems:?}");
        assert!(has("undefined $job"), "{problems:?}");
        assert!(has("undefined $nope"), "{problems:?}");
        assert!(!has("undefined $__interval"), "{problems:?}");
        assert!(has("d1.json: uid \"a\" is also the uid of d0.json"), "{problems:?}");
        assert_eq!(problems.len(), 9, "{problems:?}");
    }

    #[test]
    fn needs_a_datasource_variable() {
        let mut d = good("a");
        d["templating"]["list"][0]["type"] = json!("custom");
        let problems = check_structure(&named(vec![d]));
        assert!(problems.iter().any(|p| p.contains("no \"datasource\" template variable")), "{problems:?}");
        let mut d = good("a");
        d["templating"]["list"].as_array_mut().unwrap().remove(0);
        let problems = check_structure(&named(vec![d]));
        assert!(problems.iter().any(|p| p.contains("no \"datasource\" template variable")), "{problems:?}");
    }

    #[test]
    fn variable_queries_are_checked_too() {
        let mut d = good("a");
        d["templating"]["list"][2]["query"] = json!("label_values(m_total{ns=~\"$namespace\"}, pod)");
        let problems = check_structure(&named(vec![d]));
        assert_eq!(problems, vec!["d0.json: variable \"pod\" uses undefined $namespace".to_string()]);
    }

    #[test]
    fn substitutes_all_forms() {
        let vars: BTreeMap<String, String> =
            [("service", "svc-a|svc-b"), ("__rate_interval", "30s")].map(|(k, v)| (k.into(), v.into())).into();
        let q = panel_queries(&named(vec![good("a")]), &vars);
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].dashboard, "d0.json");
        assert_eq!(q[0].panel, "a");
        assert_eq!(q[0].expr, "sum by (le) (rate(m_bucket{service=~\"svc-a|svc-b\", pod=~\".*\"}[30s]))");
        assert_eq!(q[1].panel, "b");
        assert_eq!(q[1].expr, "sum(increase(m_total{pod=~\".*\"}[1h]))");
        let q = panel_queries(&named(vec![good("a")]), &BTreeMap::new());
        assert!(q[0].expr.ends_with("[1m]))"), "{}", q[0].expr);
    }

    #[test]
    fn unknown_and_malformed_references_are_left_alone() {
        let (out, names) = substitute("a $x ${y:csv} $ ${ $9z ${unclosed", &mut |n, f| {
            (n == "x" || n == "y").then(|| format!("<{n}{}>", f.unwrap_or("")))
        });
        assert_eq!(out, "a <x> <ycsv> $ ${ $9z ${unclosed");
        assert_eq!(names, vec!["x", "y", "9z"]);
        assert_eq!(referenced_vars("rate(a[$__rate_interval]) / $b_c"), vec!["__rate_interval", "b_c"]);
    }

    #[test]
    fn finds_metric_names() {
        let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
        assert_eq!(
            names(
                "histogram_quantile(0.99, sum by (le, service) (rate(a_seconds_bucket{service=~\"x(y)\", \
                 route!=\"{z}\"}[5m])))"
            ),
            vec!["a_seconds_bucket"]
        );
        assert_eq!(
            names("max by (gpu) (g_util and on (instance, gpu) p_bytes{pod=~\".*\"}) / ignoring(x) group_left(y) h"),
            vec!["g_util", "h", "p_bytes"]
        );
        assert_eq!(names("count(up{job=~\"a\"} == 0) or vector(0)"), vec!["up"]);
        assert_eq!(names("sum(rate(c_total[5m] offset 1h)) * 1e-9 > bool 0.5"), vec!["c_total"]);
        assert_eq!(names("sort_desc(sum by(stage)(increase(s_sum[1h:5m])))"), vec!["s_sum"]);
    }

    #[test]
    fn loads_a_directory() {
        let dir = std::env::temp_dir().join(format!("inferscope-dash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.json"), good("b").to_string()).unwrap();
        std::fs::write(dir.join("a.json"), good("a").to_string()).unwrap();
        std::fs::write(dir.join("notes.md"), "not json").unwrap();
        let loaded = load_dir_named(&dir).unwrap();
        assert_eq!(loaded.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["a.json", "b.json"]);
        assert_eq!(load_dir(&dir).unwrap().len(), 2);
        std::fs::write(dir.join("c.json"), "{").unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert!(err.contains("c.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load_dir(&dir).is_err());
    }
}
