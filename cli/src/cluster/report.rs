//! A [`Report`] as people and CI read it: text (default), JSON, or SARIF 2.1.0 for
//! code-scanning tools.

use serde_json::{json, Value};

use super::{Kind, Report, Severity};

/// Output formats of `check --cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Sarif,
}

impl Format {
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "human" | "text" => Some(Format::Human),
            "json" => Some(Format::Json),
            "sarif" => Some(Format::Sarif),
            _ => None,
        }
    }
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Human => human(report),
        Format::Json => json(report).to_string() + "\n",
        Format::Sarif => serde_json::to_string_pretty(&sarif(report)).unwrap_or_default() + "\n",
    }
}

/// One block per finding: severity, kind and object; what was seen; the fix.
pub fn human(report: &Report) -> String {
    let mut out = String::new();
    if let Some(gateway) = &report.gateway {
        out.push_str(&format!("gateway: {gateway}\n"));
    }
    for f in &report.findings {
        out.push_str(&format!("{}[{}] {}: {}\n", f.severity(), f.kind, f.object, f.message));
        out.push_str(&format!("    fix: {}\n", f.fix));
    }
    out.push_str(&format!(
        "{} error(s), {} warning(s), {} note(s); {} machine backend(s) checked\n",
        report.count(Severity::Error),
        report.count(Severity::Warning),
        report.count(Severity::Note),
        report.backends
    ));
    out
}

pub fn json(report: &Report) -> Value {
    let findings: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            json!({
                "kind": f.kind.code(),
                "severity": f.severity().as_str(),
                "object": f.object,
                "message": f.message,
                "fix": f.fix,
                "file": f.file,
            })
        })
        .collect();
    json!({
        "gateway": report.gateway,
        "backends": report.backends,
        "findings": findings,
        "summary": {
            "errors": report.count(Severity::Error),
            "warnings": report.count(Severity::Warning),
            "notes": report.count(Severity::Note),
        }
    })
}

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Note => "note",
    }
}

/// SARIF 2.1.0: one rule per [`Kind`], one result per finding. Objects of the
/// cluster have no file: they are logical locations (`Service payments/api`);
/// findings about a configuration entry point at its file too.
pub fn sarif(report: &Report) -> Value {
    let rules: Vec<Value> = Kind::ALL
        .iter()
        .map(|kind| {
            json!({
                "id": kind.code(),
                "shortDescription": { "text": kind.title() },
                "help": { "text": kind.help() },
                "defaultConfiguration": { "level": level(kind.severity()) },
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let index = Kind::ALL.iter().position(|k| *k == f.kind).unwrap_or_default();
            let mut location = json!({
                "logicalLocations": [{ "fullyQualifiedName": f.object, "kind": "resource" }]
            });
            if let (Some(file), Some(members)) = (&f.file, location.as_object_mut()) {
                members.insert("physicalLocation".into(), json!({ "artifactLocation": { "uri": file } }));
            }
            json!({
                "ruleId": f.kind.code(),
                "ruleIndex": index,
                "level": level(f.severity()),
                "message": { "text": format!("{}: {}. Fix: {}", f.object, f.message, f.fix) },
                "locations": [location],
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "nhi-guard",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/your-org/nhi-guard",
                "rules": rules,
            }},
            "results": results,
        }]
    })
}
