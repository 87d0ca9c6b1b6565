//! tracer's modules, and the kernel programs', import each other without a
//! circle: at every level of the module tree, the graph of which sibling
//! uses which is acyclic (a module's use of its own parent or children does
//! not count). Sibling files of a folder and its directory modules
//! (`sources/identity.rs`, `sources/targets/mod.rs`) are the nodes of one
//! graph.
//!
//! Read from the sources, so that a new circle fails the tests: a small
//! lexer (comments, strings and char literals are skipped, so that text in
//! docs and messages is no edge) and a scanner that follows the `mod`
//! declarations from the crate roots (`#[path]` honoured), leaves out test
//! code (`#[cfg(test)]` and `#[test]` items, wherever they are in a file, and
//! the `_tests.rs` files they load), and reads every path that names a
//! module of the crate: `use` trees, and `crate::`, `super::` and `self::`
//! paths written inline in code. A path through a module's `use` (a
//! re-export, or a parent's private import used as `super::Name`) counts as
//! a use of the module the name comes from.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt, fs,
    path::{Path, PathBuf},
};

/// A module as a path of names from the crate root (`[]` is the root).
type ModPath = Vec<String>;

/// Edges between sibling modules, keyed by their parent: from -> to ->
/// the first reference that makes the edge (file and path).
type Graphs = BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>>;

// ---------------------------------------------------------------- lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// A string literal's text (only `#[path = "…"]` reads it).
    Str(String),
    /// `::`
    PathSep,
    /// `->` or `=>`: never an angle bracket.
    Arrow,
    Punct(char),
    /// Numbers, chars, lifetimes.
    Lit,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The end of a `"…"` string whose text starts at `i`, and its text.
fn string(s: &[char], mut i: usize) -> (usize, String) {
    let start = i;
    while i < s.len() && s[i] != '"' {
        i += if s[i] == '\\' { 2 } else { 1 };
    }
    let text = s[start..i.min(s.len())].iter().collect();
    (i + 1, text)
}

/// The end of a raw string `#…#"…"#…#` whose hashes start at `i`, and its text.
fn raw_string(s: &[char], mut i: usize) -> (usize, String) {
    let mut hashes = 0;
    while s.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    let start = i;
    while i < s.len() {
        if s[i] == '"' && (1..=hashes).all(|k| s.get(i + k) == Some(&'#')) {
            return (i + 1 + hashes, s[start..i].iter().collect());
        }
        i += 1;
    }
    (i, s[start..].iter().collect())
}

/// The end of a char literal or lifetime whose quote is at `i`.
fn quote(s: &[char], i: usize) -> usize {
    if s.get(i + 1) == Some(&'\\') {
        // An escape: `'\n'`, `'\''`, `'\u{1F600}'`.
        let mut j = i + 3;
        while j < s.len() && s[j] != '\'' {
            j += 1;
        }
        j + 1
    } else if s.get(i + 2) == Some(&'\'') {
        i + 3
    } else {
        // A lifetime or label: `'a`, `'static`.
        let mut j = i + 1;
        while j < s.len() && is_ident_char(s[j]) {
            j += 1;
        }
        j
    }
}

/// Rust source as tokens, without whitespace, comments (doc comments
/// included) and the text of literals.
fn lex(text: &str) -> Vec<Tok> {
    let s: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest.
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let (end, text) = string(&s, i + 1);
            out.push(Tok::Str(text));
            i = end;
        } else if c == '\'' {
            i = quote(&s, i);
            out.push(Tok::Lit);
        } else if is_ident_start(c) {
            let start = i;
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            let after = s.get(i).copied();
            let raw_quote = || {
                let mut j = i;
                while s.get(j) == Some(&'#') {
                    j += 1;
                }
                s.get(j) == Some(&'"')
            };
            match (word.as_str(), after) {
                ("b" | "c", Some('"')) => {
                    let (end, text) = string(&s, i + 1);
                    out.push(Tok::Str(text));
                    i = end;
                }
                ("r" | "br" | "cr", Some('"' | '#')) if raw_quote() => {
                    let (end, text) = raw_string(&s, i);
                    out.push(Tok::Str(text));
                    i = end;
                }
                ("b", Some('\'')) => {
                    i = quote(&s, i);
                    out.push(Tok::Lit);
                }
                ("r", Some('#')) if s.get(i + 1).is_some_and(|&c| is_ident_start(c)) => {
                    // A raw identifier: `r#type`.
                    let start = i + 1;
                    i = start;
                    while i < s.len() && is_ident_char(s[i]) {
                        i += 1;
                    }
                    out.push(Tok::Ident(s[start..i].iter().collect()));
                }
                _ => out.push(Tok::Ident(word)),
            }
        } else if c.is_ascii_digit() {
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            out.push(Tok::Lit);
        } else if c == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else if (c == '-' || c == '=') && next == Some('>') {
            out.push(Tok::Arrow);
            i += 2;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

// -------------------------------------------------------------- scanner

fn is_ident(t: Option<&Tok>, word: &str) -> bool {
    matches!(t, Some(Tok::Ident(w)) if w == word)
}

/// The index of the bracket closing the one at `open`.
fn closing(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// Whether a cfg predicate holds only in test builds: `test`, or `all(…)`
/// with such a part, or `any(…)` of only such parts. Returns it and the
/// index after the predicate.
fn cfg_needs_test(toks: &[Tok], i: usize) -> (bool, usize) {
    let Some(Tok::Ident(word)) = toks.get(i) else {
        return (false, i + 1);
    };
    if toks.get(i + 1) == Some(&Tok::Punct('=')) {
        return (false, i + 3);
    }
    if toks.get(i + 1) != Some(&Tok::Punct('(')) {
        return (word == "test", i + 1);
    }
    let close = closing(toks, i + 1);
    let mut parts = Vec::new();
    let mut j = i + 2;
    while j < close {
        let (needs, next) = cfg_needs_test(toks, j);
        parts.push(needs);
        j = next;
        if toks.get(j) == Some(&Tok::Punct(',')) {
            j += 1;
        }
    }
    let needs = match word.as_str() {
        "all" => parts.iter().any(|&p| p),
        "any" => !parts.is_empty() && parts.iter().all(|&p| p),
        _ => false,
    };
    (needs, close + 1)
}

/// Whether an attribute's tokens (inside `#[…]`) make its item test code.
fn attr_is_test(attr: &[Tok]) -> bool {
    match attr {
        [Tok::Ident(w)] => w == "test",
        [Tok::Ident(w), Tok::Punct('('), ..] if w == "cfg" => cfg_needs_test(attr, 2).0,
        _ => false,
    }
}

/// The index after the item (or statement, field, arm) starting at `i`:
/// after its `;` or `,`, or its closing brace; at an enclosing closing
/// bracket if it ends there.
fn skip_item(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0;
    let mut angle = 0;
    while i < toks.len() {
        match toks[i] {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']') if depth == 0 => return i,
            Tok::Punct(')' | ']') => depth -= 1,
            Tok::Punct('}') if depth == 0 => return i,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            Tok::Punct(',') if depth == 0 && angle == 0 => return i + 1,
            Tok::Punct('<') if depth == 0 => angle += 1,
            Tok::Punct('>') if depth == 0 && angle > 0 => angle -= 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `mod name;` in a file, inside the inline modules `scope`.
#[derive(Debug)]
struct Decl {
    scope: Vec<String>,
    name: String,
    path: Option<String>,
    test: bool,
}

/// A path that may name a module of the crate, as written: starting with
/// `crate`, `super`, `self`, `::` (another crate) or a name in scope.
#[derive(Debug)]
struct Written {
    scope: Vec<String>,
    path: Vec<String>,
    /// The name a `use` binds to it (none for `*` and `as _`, or inline).
    binds: Option<String>,
}

#[derive(Debug, Default)]
struct Scanned {
    /// The whole file is test code (`#![cfg(test)]`).
    test: bool,
    /// Its brackets do not balance: the lexer misread it.
    misread: bool,
    decls: Vec<Decl>,
    /// Inline `mod name { … }` outside test code, as scopes.
    inline: Vec<Vec<String>>,
    paths: Vec<Written>,
}

/// A `use` tree from `i` (after `use`, or inside braces) under `prefix`;
/// returns the index after it.
fn use_tree(toks: &[Tok], mut i: usize, mut prefix: Vec<String>, scan: &mut Vec<Written>) -> usize {
    if toks.get(i) == Some(&Tok::PathSep) {
        prefix.push("::".to_owned());
        i += 1;
    }
    loop {
        match toks.get(i) {
            Some(Tok::Ident(word)) => {
                prefix.push(word.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                if word == "self" && prefix.len() > 1 {
                    prefix.pop();
                }
                let mut binds = prefix.last().cloned();
                if is_ident(toks.get(i), "as") {
                    binds = match toks.get(i + 1) {
                        Some(Tok::Ident(alias)) if alias != "_" => Some(alias.clone()),
                        _ => None,
                    };
                    i += 2;
                }
                scan.push(Written {
                    scope: Vec::new(),
                    path: prefix,
                    binds,
                });
                return i;
            }
            Some(Tok::Punct('*')) => {
                scan.push(Written {
                    scope: Vec::new(),
                    path: prefix,
                    binds: None,
                });
                return i + 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while i < toks.len() && toks[i] != Tok::Punct('}') {
                    i = use_tree(toks, i, prefix.clone(), scan);
                    if toks.get(i) == Some(&Tok::Punct(',')) {
                        i += 1;
                    } else if toks.get(i) != Some(&Tok::Punct('}')) {
                        break;
                    }
                }
                return i + 1;
            }
            _ => return i,
        }
    }
}

/// The module declarations, inline modules and paths of one file's code
/// outside its tests.
fn scan(toks: &[Tok]) -> Scanned {
    let mut out = Scanned::default();
    // Inline modules open at this point, each with the brace depth inside it.
    let mut scopes: Vec<(String, usize)> = Vec::new();
    let scope_of = |scopes: &[(String, usize)]| -> Vec<String> {
        scopes.iter().map(|(name, _)| name.clone()).collect()
    };
    let mut depth = 0;
    // The attributes of the item about to start.
    let mut test = false;
    let mut path_attr: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('#') => {
                let inner = toks.get(i + 1) == Some(&Tok::Punct('!'));
                let open = i + 1 + usize::from(inner);
                if toks.get(open) != Some(&Tok::Punct('[')) {
                    i += 1;
                    continue;
                }
                let close = closing(toks, open);
                let attr = &toks[open + 1..close.min(toks.len())];
                i = close + 1;
                if inner {
                    if attr_is_test(attr) {
                        // The rest of the file, or of the inline module, is test code.
                        let Some((name, inside)) = scopes.pop() else {
                            out.test = true;
                            return out;
                        };
                        let scope = [scope_of(&scopes), vec![name]].concat();
                        out.inline.retain(|s| !s.starts_with(&scope));
                        while i < toks.len() && depth >= inside {
                            match toks[i] {
                                Tok::Punct('{') => depth += 1,
                                Tok::Punct('}') => depth -= 1,
                                _ => {}
                            }
                            i += 1;
                        }
                    }
                    continue;
                }
                test |= attr_is_test(attr);
                if let [Tok::Ident(w), Tok::Punct('='), Tok::Str(p)] = attr
                    && w == "path"
                {
                    path_attr = Some(p.clone());
                }
                continue;
            }
            _ if test => {
                test = false;
                let end = skip_item(toks, i);
                // An outline test module still has a file: note it.
                if let [.., Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')] = &toks[i..end]
                    && m == "mod"
                {
                    out.decls.push(Decl {
                        scope: scope_of(&scopes),
                        name: name.clone(),
                        path: path_attr.take(),
                        test: true,
                    });
                }
                path_attr = None;
                // (At an enclosing bracket, `end == i`: it is read as code.)
                i = end;
                continue;
            }
            Tok::Ident(w) if w == "mod" => {
                if let Some(Tok::Ident(name)) = toks.get(i + 1) {
                    match toks.get(i + 2) {
                        Some(Tok::Punct(';')) => {
                            out.decls.push(Decl {
                                scope: scope_of(&scopes),
                                name: name.clone(),
                                path: path_attr.take(),
                                test: false,
                            });
                            i += 3;
                        }
                        Some(Tok::Punct('{')) => {
                            depth += 1;
                            scopes.push((name.clone(), depth));
                            out.inline.push(scope_of(&scopes));
                            i += 3;
                        }
                        _ => i += 1,
                    }
                    path_attr = None;
                    continue;
                }
            }
            // `use<'a>` in `impl Trait + use<'a>` is no use declaration.
            Tok::Ident(w) if w == "use" && toks.get(i + 1) != Some(&Tok::Punct('<')) => {
                let start = out.paths.len();
                i = use_tree(toks, i + 1, Vec::new(), &mut out.paths);
                let scope = scope_of(&scopes);
                // A `use` in a function body binds no name of the module.
                let in_module = depth == scopes.last().map_or(0, |s| s.1);
                for written in &mut out.paths[start..] {
                    written.scope = scope.clone();
                    if !in_module {
                        written.binds = None;
                    }
                }
                while i < toks.len() && toks[i] != Tok::Punct(';') {
                    i += 1;
                }
                path_attr = None;
                continue;
            }
            Tok::Ident(w)
                if matches!(w.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1) == Some(&Tok::PathSep) =>
            {
                let mut path = vec![w.clone()];
                i += 1;
                while toks.get(i) == Some(&Tok::PathSep) {
                    let Some(Tok::Ident(next)) = toks.get(i + 1) else {
                        break;
                    };
                    path.push(next.clone());
                    i += 2;
                }
                out.paths.push(Written {
                    scope: scope_of(&scopes),
                    path,
                    binds: None,
                });
                continue;
            }
            Tok::Punct('{') => {
                depth += 1;
                path_attr = None;
            }
            Tok::Punct('}') => {
                if scopes.last().is_some_and(|s| s.1 == depth) {
                    scopes.pop();
                }
                depth = depth.saturating_sub(1);
                path_attr = None;
            }
            Tok::Punct(';') => path_attr = None,
            _ => {}
        }
        i += 1;
    }
    let mut balance = 0;
    for t in toks {
        match t {
            Tok::Punct('(' | '[' | '{') => balance += 1,
            Tok::Punct(')' | ']' | '}') => balance -= 1,
            _ => {}
        }
    }
    out.misread = balance != 0;
    out
}

// ----------------------------------------------------------- the crate

/// One reference from a module's code to a path.
#[derive(Debug)]
struct Reference {
    from: ModPath,
    path: Vec<String>,
    /// Where it is written, for the message.
    file: String,
}

/// A crate's module tree and what its code refers to.
#[derive(Debug, Default)]
struct Crate {
    modules: BTreeSet<ModPath>,
    /// The names each module's `use`s bind, to the path written and the
    /// module it is written in.
    imports: BTreeMap<ModPath, BTreeMap<String, (Vec<String>, ModPath)>>,
    references: Vec<Reference>,
    /// Files read as code, and files of test modules (not read).
    read: BTreeSet<PathBuf>,
    tests: BTreeSet<PathBuf>,
    misread: Vec<PathBuf>,
}

impl Crate {
    /// Reads the crate whose roots (`lib.rs`, `main.rs`) are in `src`,
    /// following its `mod` declarations.
    fn read(src: &Path) -> Self {
        let mut krate = Self::default();
        let mut queue: VecDeque<(PathBuf, ModPath, bool)> = ["lib.rs", "main.rs"]
            .iter()
            .map(|root| src.join(root))
            .filter(|root| root.exists())
            .map(|root| (root, Vec::new(), true))
            .collect();
        while let Some((file, module, mod_rs)) = queue.pop_front() {
            let text = fs::read_to_string(&file)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
            let scanned = scan(&lex(&text));
            if scanned.misread {
                krate.misread.push(file.clone());
            }
            if scanned.test {
                krate.tests.insert(file);
                continue;
            }
            let shown = file
                .strip_prefix(src)
                .unwrap_or(&file)
                .display()
                .to_string();
            let dir = file.parent().unwrap_or(src).to_path_buf();
            // Where this file's submodules are: beside a mod-rs file (a
            // root, a mod.rs, a #[path] file), in a folder named for the
            // module beside any other.
            let base = if mod_rs {
                dir.clone()
            } else {
                dir.join(file.file_stem().unwrap_or_default())
            };
            krate.modules.insert(module.clone());
            for scope in &scanned.inline {
                krate
                    .modules
                    .insert([module.clone(), scope.clone()].concat());
            }
            for decl in scanned.decls {
                let scoped = decl.scope.iter().fold(base.clone(), |d, s| d.join(s));
                let (path, child_mod_rs) = match &decl.path {
                    Some(p) if decl.scope.is_empty() => (dir.join(p), true),
                    Some(p) => (scoped.join(p), true),
                    None => {
                        let flat = scoped.join(format!("{}.rs", decl.name));
                        if flat.exists() {
                            (flat, false)
                        } else {
                            (scoped.join(&decl.name).join("mod.rs"), true)
                        }
                    }
                };
                if decl.test {
                    krate.tests.insert(path);
                } else {
                    let child = [module.clone(), decl.scope, vec![decl.name]].concat();
                    queue.push_back((path, child, child_mod_rs));
                }
            }
            for written in scanned.paths {
                let from = [module.clone(), written.scope].concat();
                if let Some(name) = written.binds {
                    krate
                        .imports
                        .entry(from.clone())
                        .or_default()
                        .insert(name, (written.path.clone(), from.clone()));
                }
                krate.references.push(Reference {
                    from,
                    path: written.path,
                    file: shown.clone(),
                });
            }
            krate.read.insert(file);
        }
        krate
    }

    /// `path` as written in module `at`, from the crate root; `None` if it
    /// names another crate's item.
    fn absolute(&self, path: &[String], at: &ModPath) -> Option<Vec<String>> {
        let (first, rest) = path.split_first()?;
        match first.as_str() {
            "crate" => Some(rest.to_vec()),
            "self" => Some([at.as_slice(), rest].concat()),
            "super" => {
                let mut base = at.clone();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                Some([base.as_slice(), rest].concat())
            }
            "::" => None,
            name => {
                let child = [at.clone(), vec![name.to_owned()]].concat();
                let imported = self.imports.get(at).is_some_and(|m| m.contains_key(name));
                (self.modules.contains(&child) || imported).then(|| [at.as_slice(), path].concat())
            }
        }
    }

    /// The module whose item `path` (from the root) names, through the
    /// `use`s that re-export it.
    fn owner(&self, path: &[String], hops: usize) -> ModPath {
        let known = (0..=path.len())
            .rev()
            .find(|&n| self.modules.contains(&path[..n]))
            .unwrap_or(0);
        let module = path[..known].to_vec();
        if let Some(name) = path.get(known)
            && hops < 16
            && let Some((written, at)) = self.imports.get(&module).and_then(|m| m.get(name))
            && let Some(through) = self.absolute(written, at)
        {
            return self.owner(&[through.as_slice(), &path[known + 1..]].concat(), hops + 1);
        }
        module
    }

    /// Every edge between siblings.
    fn graphs(&self) -> Graphs {
        let mut graphs = Graphs::new();
        for r in &self.references {
            let Some(path) = self.absolute(&r.path, &r.from) else {
                continue;
            };
            let target = self.owner(&path, 0);
            let me = &r.from;
            let common = me.iter().zip(&target).take_while(|(a, b)| a == b).count();
            // A module's own ancestors and descendants do not count.
            if common == me.len() || common == target.len() {
                continue;
            }
            graphs
                .entry(me[..common].to_vec())
                .or_default()
                .entry(me[common].clone())
                .or_default()
                .entry(target[common].clone())
                .or_insert_with(|| format!("{}: {}", r.file, r.path.join("::")));
        }
        graphs
    }
}

// ------------------------------------------------------------ circles

/// Sibling modules that import each other in a circle.
#[derive(Debug, PartialEq)]
struct Circle {
    parent: ModPath,
    /// Every sibling tangled in it (a strongly connected set), sorted.
    modules: Vec<String>,
    /// One shortest circle among them, its first module again at the end,
    /// and the reference behind each step.
    cycle: Vec<String>,
    through: Vec<String>,
}

impl fmt::Display for Circle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "modules of crate::{} import each other in a circle: {}",
            self.parent.join("::"),
            self.cycle.join(" -> ")
        )?;
        for (step, through) in self.cycle.windows(2).zip(&self.through) {
            writeln!(f, "    {} -> {}: {through}", step[0], step[1])?;
        }
        write!(f, "    (tangled: {})", self.modules.join(", "))
    }
}

/// Why a crate fails the check.
#[derive(Debug)]
enum Failure {
    Circles(Vec<Circle>),
    /// Files under src that no `mod` declaration reaches: the check did
    /// not read them.
    Unreached(Vec<PathBuf>),
    /// Files whose brackets do not balance once comments and literals are
    /// left out: the check misread them.
    Misread(Vec<PathBuf>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Circles(circles) => {
                for c in circles {
                    writeln!(f, "{c}")?;
                }
                Ok(())
            }
            Self::Unreached(files) | Self::Misread(files) => {
                let what = match self {
                    Self::Unreached(_) => "files no `mod` declaration reaches",
                    _ => "files the lexer misread (unbalanced brackets)",
                };
                writeln!(f, "{what}:")?;
                for file in files {
                    writeln!(f, "    {}", file.display())?;
                }
                Ok(())
            }
        }
    }
}

/// Every circle in one parent's graph.
fn circles(parent: &ModPath, graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Circle> {
    let next = |n: &str| graph.get(n).into_iter().flat_map(|e| e.keys());
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = next(from).map(String::as_str).collect();
        while let Some(n) = todo.pop() {
            if seen.insert(n.to_owned()) {
                todo.extend(next(n).map(String::as_str));
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<String>> =
        graph.keys().map(|n| (n.as_str(), reach(n))).collect();
    let mut out = Vec::new();
    let mut placed = BTreeSet::new();
    for (&node, reached) in &reaches {
        if placed.contains(node) || !reached.contains(node) {
            continue;
        }
        let modules: Vec<String> = reached
            .iter()
            .filter(|m| reaches.get(m.as_str()).is_some_and(|r| r.contains(node)))
            .cloned()
            .collect();
        placed.extend(modules.iter().cloned());
        // The shortest way back to `node`, breadth first inside the set.
        let mut from: BTreeMap<String, String> = BTreeMap::new();
        let mut todo = VecDeque::from([node.to_owned()]);
        'search: while let Some(n) = todo.pop_front() {
            for m in next(&n) {
                if !modules.contains(m) || from.contains_key(m) {
                    continue;
                }
                from.insert(m.clone(), n.clone());
                if m == node {
                    break 'search;
                }
                todo.push_back(m.clone());
            }
        }
        let mut cycle = vec![node.to_owned()];
        let mut at = node.to_owned();
        while let Some(prev) = from.get(&at) {
            cycle.push(prev.clone());
            at = prev.clone();
            if at == node {
                break;
            }
        }
        cycle.reverse();
        let through = cycle
            .windows(2)
            .map(|w| graph[&w[0]][&w[1]].clone())
            .collect();
        out.push(Circle {
            parent: parent.clone(),
            modules,
            cycle,
            through,
        });
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The sibling graphs of the crate whose roots are in `src`, or why it fails:
/// its circles, or files the check could not reach or read.
fn check_crate(src: &Path) -> Result<Graphs, Failure> {
    let krate = Crate::read(src);
    if !krate.misread.is_empty() {
        return Err(Failure::Misread(krate.misread));
    }
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let unreached: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| !krate.read.contains(f) && !krate.tests.contains(f))
        .collect();
    if !unreached.is_empty() {
        return Err(Failure::Unreached(unreached));
    }
    let graphs = krate.graphs();
    let found: Vec<Circle> = graphs
        .iter()
        .flat_map(|(parent, graph)| circles(parent, graph))
        .collect();
    if found.is_empty() {
        Ok(graphs)
    } else {
        Err(Failure::Circles(found))
    }
}

/// Whether `graphs` has the edge `from -> to` among the children of `parent`.
fn has_edge(graphs: &Graphs, parent: &[&str], from: &str, to: &str) -> bool {
    let parent: ModPath = parent.iter().map(|s| (*s).to_owned()).collect();
    graphs
        .get(&parent)
        .and_then(|g| g.get(from))
        .is_some_and(|e| e.contains_key(to))
}

#[test]
fn modules_import_each_other_without_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graphs =
        check_crate(&root.join("src")).unwrap_or_else(|failure| panic!("tracer: {failure}"));
    // The checker sees edges at all (a parse that finds nothing passes):
    // through `use crate::`, `use super::`, an inline `super::` path and a
    // parent's re-export (`super::Writer`).
    for (parent, from, to) in [
        (&[][..], "sources", "model"),
        (&["sources", "lifecycle"][..], "targets", "launch"),
        (&["report", "render"][..], "text", "lines"),
        (&["capture"][..], "background", "writer"),
    ] {
        assert!(
            has_edge(&graphs, parent, from, to),
            "{from} -> {to} not found: {graphs:#?}"
        );
    }
    let kernel = check_crate(&root.join("../tracer-ebpf/src"))
        .unwrap_or_else(|failure| panic!("tracer-ebpf: {failure}"));
    assert!(
        has_edge(&kernel, &[], "submit", "python"),
        "submit -> python not found: {kernel:#?}"
    );
}

// --------------------------------------------- the checker, on synthetic trees

/// A crate's src folder with `files` (path, text) in it.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (path, text) in files {
        let path = dir.path().join(path);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create the folders");
        fs::write(&path, text).expect("write a source file");
    }
    dir
}

fn circles_of(files: &[(&str, &str)]) -> Vec<Circle> {
    let dir = tree(files);
    match check_crate(dir.path()) {
        Ok(graphs) => panic!("no circle found: {graphs:#?}"),
        Err(Failure::Circles(circles)) => circles,
        Err(failure) => panic!("{failure}"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn finds_a_circle_of_sibling_files_made_by_inline_super_paths() {
    let found = circles_of(&[
        ("lib.rs", "mod shop;\n"),
        ("shop/mod.rs", "mod cart;\nmod price;\nmod tax;\n"),
        (
            "shop/cart.rs",
            "pub fn total() -> u32 { super::price::of(1) }\n",
        ),
        (
            "shop/price.rs",
            "pub fn of(n: u32) -> u32 { n + super::tax::RATE }\n",
        ),
        (
            "shop/tax.rs",
            "pub const RATE: u32 = 2;\npub fn on_cart() -> u32 { super::cart::total() }\n",
        ),
    ]);
    assert_eq!(
        found,
        [Circle {
            parent: names(&["shop"]),
            modules: names(&["cart", "price", "tax"]),
            cycle: names(&["cart", "price", "tax", "cart"]),
            through: names(&[
                "shop/cart.rs: super::price::of",
                "shop/price.rs: super::tax::RATE",
                "shop/tax.rs: super::cart::total",
            ]),
        }]
    );
}

#[test]
fn finds_a_circle_through_a_directory_module_and_crate_paths() {
    let found = circles_of(&[
        ("lib.rs", "mod sources;\n"),
        ("sources/mod.rs", "pub mod identity;\npub mod targets;\n"),
        (
            "sources/identity.rs",
            "pub struct Identity;\npub fn watch() { crate::sources::targets::readable(); }\n",
        ),
        (
            "sources/targets/mod.rs",
            "mod adoption;\npub fn readable() {}\n",
        ),
        (
            "sources/targets/adoption.rs",
            "pub fn adopt(_: &crate::sources::identity::Identity) {}\n",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].parent, names(&["sources"]));
    assert_eq!(found[0].cycle, names(&["identity", "targets", "identity"]));
}

#[test]
fn finds_a_circle_through_a_parents_reexport() {
    let found = circles_of(&[
        ("lib.rs", "mod render;\n"),
        (
            "render/mod.rs",
            "mod text;\nmod lines;\npub use text::grouped;\n",
        ),
        (
            "render/text.rs",
            "pub fn grouped() {}\npub fn text() { super::lines::text() }\n",
        ),
        (
            "render/lines.rs",
            "use super::grouped;\npub fn text() { grouped() }\n",
        ),
    ]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].cycle, names(&["lines", "text", "lines"]));
}

#[test]
fn passes_an_acyclic_tree_and_ignores_text_and_tests() {
    let dir = tree(&[
        ("lib.rs", "mod shop;\n"),
        (
            "shop/mod.rs",
            "mod cart;\nmod price;\nmod receipt;\n#[path = \"tax_table.rs\"]\nmod tax;\n",
        ),
        (
            "shop/cart.rs",
            r##"//! Not an edge: super::tax::RATE, crate::shop::price.
use super::price::{self, of};

/* nested /* comment */ super::tax::X */
pub fn total() -> u32 {
    let _ = "super::tax::RATE";
    let _ = r#"crate::shop::tax::RATE "quoted""#;
    let _ = ('"', b'\'', '\u{22}');
    of(1) + price::of(2)
}

pub struct Cart;

impl Cart {
    #[cfg(test)]
    fn tested() -> u32 {
        super::receipt::lines::print();
        0
    }

    /// Read although it comes after test code.
    pub fn taxed<'a>(&'a self) -> u32 {
        crate::shop::tax::RATE
    }
}

#[cfg(test)]
mod tests {
    use super::super::tax;
}

#[test]
fn printed() {
    super::receipt::lines::print();
}

#[cfg(test)]
#[path = "cart_tests.rs"]
mod file_tests;
"##,
        ),
        (
            "shop/price.rs",
            "pub fn of(n: u32) -> u32 { n * super::tax::RATE }\n\
             mod checks {\n    #![cfg(test)]\n    fn f() { super::super::cart::total(); }\n}\n",
        ),
        // `super` in an inline module is its file's module.
        (
            "shop/receipt.rs",
            "pub mod lines {\n    pub fn print() { super::super::cart::total(); }\n}\n",
        ),
        ("shop/tax_table.rs", "pub const RATE: u32 = 2;\n"),
        // Test code may use anything.
        (
            "shop/cart_tests.rs",
            "use super::Cart;\nfn f() { super::super::receipt::lines::print(); }\n",
        ),
    ]);
    let graphs = check_crate(dir.path()).unwrap_or_else(|failure| panic!("{failure}"));
    let edges: Vec<(String, String)> = graphs[&names(&["shop"])]
        .iter()
        .flat_map(|(from, to)| to.keys().map(move |to| (from.clone(), to.clone())))
        .collect();
    let expected = [
        ("cart", "price"),
        ("cart", "tax"),
        ("price", "tax"),
        ("receipt", "cart"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(edges, expected);
}

#[test]
fn fails_on_a_file_it_does_not_reach_or_misreads() {
    let dir = tree(&[("lib.rs", "mod a;\n"), ("a.rs", ""), ("stray.rs", "")]);
    match check_crate(dir.path()) {
        Err(Failure::Unreached(files)) => assert_eq!(files, [dir.path().join("stray.rs")]),
        other => panic!("{other:?}"),
    }
    let dir = tree(&[
        ("lib.rs", "mod a;\n"),
        ("a.rs", "fn f() { let _ = \"{\"; }}\n"),
    ]);
    match check_crate(dir.path()) {
        Err(Failure::Misread(files)) => assert_eq!(files, [dir.path().join("a.rs")]),
        other => panic!("{other:?}"),
    }
}
