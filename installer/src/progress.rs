//! Step-by-step progress: what meshctl does to the cluster, one line per step, on stderr.

use std::fmt;

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It did not exist and was created.
    Created,
    /// It existed and was changed.
    Configured,
    /// It existed and already matched.
    Unchanged,
    /// It was deleted.
    Deleted,
    /// It was already gone.
    AlreadyGone,
    /// Not sent to the API server: its namespace does not exist yet (server dry run only).
    NotValidated,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
            Outcome::Deleted => "deleted",
            Outcome::AlreadyGone => "already gone",
            Outcome::NotValidated => "not validated: its namespace does not exist yet",
        }
    }
}

/// `Kind namespace/name` or `Kind name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One progress line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `[3/17] applied Deployment meshguard/order-service (created)`.
    Step {
        index: usize,
        total: usize,
        verb: &'static str,
        object: ObjectRef,
        outcome: Outcome,
        dry_run: bool,
    },
    /// A phase starts or a fact worth telling.
    Info(String),
    /// Something the user should know but that does not stop the command.
    Warning(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Step {
                index,
                total,
                verb,
                object,
                outcome,
                dry_run,
            } => {
                let detail = match (outcome, dry_run) {
                    (Outcome::Deleted, false) => String::new(),
                    (Outcome::Deleted, true) => " (server dry run)".to_owned(),
                    (o, false) => format!(" ({})", o.as_str()),
                    (o, true) => format!(" ({}, server dry run)", o.as_str()),
                };
                write!(f, "[{index}/{total}] {verb} {object}{detail}")
            }
            Event::Info(m) => write!(f, "{m}"),
            Event::Warning(m) => write!(f, "warning: {m}"),
        }
    }
}

/// Receives progress events.
pub trait Progress {
    fn report(&mut self, event: Event);

    fn info(&mut self, message: String) {
        self.report(Event::Info(message));
    }

    fn warn(&mut self, message: String) {
        self.report(Event::Warning(message));
    }
}

/// Writes each event as a line on stderr.
#[derive(Debug, Default)]
pub struct Stderr;

impl Progress for Stderr {
    fn report(&mut self, event: Event) {
        eprintln!("{event}");
    }
}

/// Keeps the events (for tests and callers that want to inspect them).
#[derive(Debug, Default)]
pub struct Recorder {
    pub events: Vec<Event>,
}

impl Progress for Recorder {
    fn report(&mut self, event: Event) {
        self.events.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines() {
        let e = Event::Step {
            index: 3,
            total: 17,
            verb: "applied",
            object: ObjectRef {
                kind: "Deployment".into(),
                namespace: Some("meshguard".into()),
                name: "order-service".into(),
            },
            outcome: Outcome::Created,
            dry_run: false,
        };
        assert_eq!(
            e.to_string(),
            "[3/17] applied Deployment meshguard/order-service (created)"
        );
    }
}
