//! Named checks and their outcomes: what the offline tool prints one line each for, and what
//! the broker turns into its first failure.

use serde_json::{json, Value};

/// One check: a stable name (`snp.signature`, `tdx.pck_chain`, ...) and what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Stable, dotted name.
    pub name: String,
    /// `Ok(what passed)` or `Err(why it failed)`, one line each.
    pub outcome: Result<String, String>,
}

/// The checks of one verification, in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checks {
    list: Vec<Check>,
}

impl Checks {
    /// No checks yet.
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Runs `f` as the check `name` and records its outcome; returns its value if it passed.
    pub fn run<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> anyhow::Result<(T, String)>,
    ) -> Option<T> {
        match f() {
            Ok((value, detail)) => {
                self.pass(name, detail);
                Some(value)
            }
            Err(e) => {
                self.fail(name, format!("{e:#}"));
                None
            }
        }
    }

    /// Records a passed check.
    pub fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.list.push(Check {
            name: name.to_string(),
            outcome: Ok(detail.into()),
        });
    }

    /// Records a failed check.
    pub fn fail(&mut self, name: &str, reason: impl Into<String>) {
        self.list.push(Check {
            name: name.to_string(),
            outcome: Err(reason.into()),
        });
    }

    /// Adds `hint` to the reason of the failed check `name`, if there is one.
    pub fn add_hint(&mut self, name: &str, hint: &str) {
        for c in self.list.iter_mut().filter(|c| c.name == name) {
            if let Err(reason) = &mut c.outcome {
                reason.push_str(hint);
            }
        }
    }

    /// Appends another verification's checks, their names prefixed with `prefix.`.
    pub fn extend_prefixed(&mut self, prefix: &str, other: Checks) {
        for mut check in other.list {
            check.name = format!("{prefix}.{}", check.name);
            self.list.push(check);
        }
    }

    /// The checks in order.
    pub fn iter(&self) -> impl Iterator<Item = &Check> {
        self.list.iter()
    }

    /// Whether every check passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        !self.list.is_empty() && self.list.iter().all(|c| c.outcome.is_ok())
    }

    /// The first failure's reason as an error, for callers that stop at the first (the
    /// broker).
    pub fn first_failure(&self) -> Option<anyhow::Error> {
        self.list.iter().find_map(|c| match &c.outcome {
            Err(reason) => Some(anyhow::anyhow!("{reason}")),
            Ok(_) => None,
        })
    }

    /// `[{"check": name, "result": "pass"|"fail", "detail"|"reason": text}, ...]`.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.list
                .iter()
                .map(|c| match &c.outcome {
                    Ok(detail) => json!({"check": c.name, "result": "pass", "detail": detail}),
                    Err(reason) => json!({"check": c.name, "result": "fail", "reason": reason}),
                })
                .collect(),
        )
    }
}
