//! What names a traced process in Pyroscope and Parca: `service_name` (its
//! systemd unit, else its container, else its script), `host`,
//! `container_id` and `pod_uid` when its cgroup path has them, `process`,
//! `pid` when asked, and fixed labels. Everything read from /proc is the
//! target's to choose: bounded, and cleaned to what the backends accept.

use std::{collections::BTreeMap, fs, io::Read as _};

use crate::event::Pid;

/// Pyroscope's default limit of label names per series is 30, and it adds
/// `__name__`, `__delta__` and `pyroscope_spy` to what it is sent.
pub const MAX_LABELS: usize = 27;
/// Pyroscope's default limit on a label value's length.
const MAX_VALUE: usize = 2048;
/// /proc/PID/cgroup is a few lines; a longer one is not read further.
const MAX_CGROUP_FILE: u64 = 64 * 1024;

/// A label set, sorted by name, each name once.
pub type Labels = BTreeMap<String, String>;

/// Whether `name` is a label name every backend accepts: Prometheus's
/// rule (Parca checks it), and not one of the reserved `__` names.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// A value as the backends take it: Pyroscope's /ingest name ends a value
/// at `,` or `}` and trims spaces; control characters help nobody.
pub fn clean_value(value: &str) -> String {
    let cleaned: String = value
        .trim()
        .chars()
        .map(|c| match c {
            ',' | '}' | '{' | '=' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    let trimmed = cleaned.trim();
    let mut end = trimmed.len().min(MAX_VALUE);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    trimmed[..end].to_owned()
}

/// What the cgroup path of a process says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// The systemd service it runs in ("nginx" for nginx.service).
    pub unit: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// Reads the cgroup v2 (or v1 systemd) path of `pid`.
pub fn cgroup_of(pid: Pid) -> Cgroup {
    let mut text = String::new();
    let read = fs::File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|f| f.take(MAX_CGROUP_FILE).read_to_string(&mut text));
    if read.is_err() {
        return Cgroup::default();
    }
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| {
            text.lines()
                .find_map(|l| l.split_once(":name=systemd:").map(|x| x.1))
        })
        .unwrap_or("");
    parse_cgroup(path)
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The unit, container and pod of a cgroup path such as
/// `/system.slice/app.service`,
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b_3c.slice/cri-containerd-<64 hex>.scope`
/// or `/docker/<64 hex>`.
pub fn parse_cgroup(path: &str) -> Cgroup {
    let mut cg = Cgroup::default();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let stem = part
            .strip_suffix(".scope")
            .or_else(|| part.strip_suffix(".slice"))
            .unwrap_or(part);
        // cri-containerd-<id>, docker-<id>, crio-<id>, libpod-<id>, or <id>.
        let id = stem.rsplit('-').next().unwrap_or(stem);
        if is_hex_id(id) {
            cg.container_id = Some(id.to_owned());
        }
        let pod = stem
            .rsplit_once("-pod")
            .map(|(_, uid)| uid)
            .or_else(|| stem.strip_prefix("pod"));
        if let Some(uid) = pod {
            let uid = uid.replace('_', "-");
            if uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                cg.pod_uid = Some(uid);
            }
        }
        // A login session's user@1000.service holds everything a user
        // runs: it names no service.
        if let Some(unit) = part.strip_suffix(".service")
            && !unit.starts_with("user@")
            && !unit.is_empty()
        {
            cg.unit = Some(unit.to_owned());
        }
    }
    cg
}

/// The script a command line runs (`app` for `python3 /srv/app.py -v`,
/// `celery` for `python -m celery worker`), else its program's name.
pub fn script_name(command: &str) -> String {
    let mut words = command.split_whitespace();
    let program = words.next().unwrap_or("");
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    let is_python = base(program).starts_with("python");
    if is_python {
        let mut module = false;
        for w in words {
            if module {
                return w.to_owned();
            }
            if w == "-m" {
                module = true;
            } else if w == "-c" {
                break;
            } else if !w.starts_with('-') {
                let name = base(w);
                return name.strip_suffix(".py").unwrap_or(&name).to_owned();
            }
        }
    }
    base(program)
}

/// The program and script of a command line, without its arguments (which
/// may hold secrets): `python3.11 app.py`.
pub fn process_name(command: &str) -> String {
    let mut words = command.split_whitespace();
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    let program = base(words.next().unwrap_or(""));
    match words.find(|w| !w.starts_with('-')) {
        Some(script) if program.starts_with("python") => format!("{program} {}", base(script)),
        _ => program,
    }
}

/// A service name as Pyroscope's /ingest takes one before the braces:
/// letters, digits and `_ . / -`.
pub fn app_name(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_./-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_VALUE)
        .collect();
    if name.is_empty() {
        "unknown".to_owned()
    } else {
        name
    }
}

/// The host's name, as the kernel has it.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| clean_value(&h))
        .unwrap_or_default()
}

/// The labels of one process: found ones, then `fixed` over them.
pub fn of_process(
    pid: Pid,
    command: &str,
    cgroup: &Cgroup,
    host: &str,
    fixed: &Labels,
    with_pid: bool,
) -> Labels {
    let mut labels = Labels::new();
    let service = cgroup
        .unit
        .clone()
        .or_else(|| cgroup.container_id.as_ref().map(|id| id[..12].to_owned()))
        .unwrap_or_else(|| script_name(command));
    labels.insert("service_name".into(), clean_value(&service));
    if !host.is_empty() {
        labels.insert("host".into(), host.to_owned());
    }
    if let Some(id) = &cgroup.container_id {
        labels.insert("container_id".into(), id.clone());
    }
    if let Some(uid) = &cgroup.pod_uid {
        labels.insert("pod_uid".into(), uid.clone());
    }
    labels.insert("process".into(), clean_value(&process_name(command)));
    if with_pid {
        labels.insert("pid".into(), pid.to_string());
    }
    for (k, v) in fixed {
        labels.insert(k.clone(), v.clone());
    }
    labels.retain(|_, v| !v.is_empty());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_name_units_containers_and_pods() {
        let unit = parse_cgroup("/system.slice/billing-api.service");
        assert_eq!(unit.unit.as_deref(), Some("billing-api"));
        assert_eq!(unit.container_id, None);
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let k8s = parse_cgroup(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_0000_1111_2222_333344445555.slice/cri-containerd-{id}.scope"
        ));
        assert_eq!(k8s.container_id.as_deref(), Some(id));
        assert_eq!(
            k8s.pod_uid.as_deref(),
            Some("1a2b3c4d-0000-1111-2222-333344445555")
        );
        assert_eq!(k8s.unit, None);
        assert_eq!(
            parse_cgroup(&format!("/docker/{id}"))
                .container_id
                .as_deref(),
            Some(id)
        );
        let user = parse_cgroup("/user.slice/user-0.slice/user@0.service/app.slice/app-x.scope");
        assert_eq!(user.unit, None);
        assert_eq!(parse_cgroup(""), Cgroup::default());
    }

    #[test]
    fn scripts_and_processes_are_named_without_arguments() {
        assert_eq!(
            script_name("/usr/bin/python3.11 -u /srv/app.py --token s3"),
            "app"
        );
        assert_eq!(script_name("python3 -m celery worker"), "celery");
        assert_eq!(script_name("/usr/sbin/nginx -g daemon"), "nginx");
        assert_eq!(
            process_name("/usr/bin/python3.11 /srv/app.py --token s3"),
            "python3.11 app.py"
        );
    }

    #[test]
    fn labels_are_cleaned_and_fixed_ones_win() {
        assert!(valid_name("team_1") && !valid_name("1x") && !valid_name("a-b"));
        assert!(!valid_name("__name__") && !valid_name(""));
        assert_eq!(clean_value(" a,b}c{d=e\n"), "a_b_c_d_e");
        let fixed = Labels::from([("host".to_owned(), "h2".to_owned())]);
        let l = of_process(7, "python3 app.py", &Cgroup::default(), "h1", &fixed, true);
        assert_eq!(l["service_name"], "app");
        assert_eq!(l["host"], "h2");
        assert_eq!(l["pid"], "7");
        assert_eq!(app_name("my app!"), "my_app_");
    }
}
