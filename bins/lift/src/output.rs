//! How `lift` prints: tables for people, one JSON object per line with `--json`, and errors as
//! one line on stderr with an exit code.

use std::io::Write;

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, Table};
use serde::Serialize;

/// Exit codes.
pub mod code {
    /// A command failed (the server refused, or could not be reached).
    pub const ERROR: i32 = 1;
    /// The command line or the local settings are wrong.
    pub const USAGE: i32 = 2;
    /// `cluster health`: a partition's ISR is smaller than its replicas.
    pub const UNDER_REPLICATED: i32 = 3;
    /// `cluster health`: a partition has no leader.
    pub const OFFLINE: i32 = 4;
}

/// Why a command stopped: a one-line message and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// The line printed on stderr (after `lift: `).
    pub message: String,
    /// The process's exit code.
    pub code: i32,
}

impl Failure {
    /// A call failed: what was being done, and what the server (or the connection) said.
    pub fn server(what: impl std::fmt::Display, e: liftbridge_client::Error) -> Failure {
        let said = match &e {
            // The server's own words, with the status: "Internal: Cursors stream does not exist".
            liftbridge_client::Error::Transport(s) => format!("{:?}: {}", s.code(), s.message()),
            // Its message already says "no broker reachable".
            liftbridge_client::Error::NoBrokers(m) if m.starts_with("no broker") => m.clone(),
            e => e.to_string(),
        };
        Failure {
            message: format!("{what}: {said}"),
            code: code::ERROR,
        }
    }

    /// The command line or local settings are wrong.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: code::USAGE,
        }
    }

    /// Any other failure with its own code.
    pub fn with_code(message: impl Into<String>, code: i32) -> Failure {
        Failure {
            message: message.into(),
            code,
        }
    }
}

/// A flag in a table cell.
pub fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// Where data goes, and in which shape.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// One JSON object per line instead of tables.
    pub json: bool,
}

impl Out {
    /// Prints `rows` as a table under `headers` (numbers right-aligned), or each row's JSON
    /// object when `--json`.
    pub fn table<T: Serialize>(
        &self,
        headers: &[&str],
        rows: &[T],
        cells: impl Fn(&T) -> Vec<String>,
    ) {
        if self.json {
            for r in rows {
                self.line(r);
            }
            return;
        }
        let mut t = Table::new();
        t.load_preset(NOTHING);
        t.set_header(headers.to_vec());
        for r in rows {
            t.add_row(cells(r));
        }
        let first = rows.first().map(&cells);
        for (i, col) in t.column_iter_mut().enumerate() {
            let numeric = first.as_ref().is_some_and(|c| c[i].parse::<f64>().is_ok());
            if numeric {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        // The preset pads each line; trailing blanks are noise in a terminal and in diffs.
        let text = t.to_string();
        let mut stdout = std::io::stdout().lock();
        for line in text.lines() {
            let _ = writeln!(stdout, "{}", line.trim_end());
        }
    }

    /// One JSON object on its own line.
    pub fn line<T: Serialize>(&self, v: &T) {
        let mut stdout = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut stdout, v);
        let _ = writeln!(stdout);
    }

    /// A sentence for people, or a JSON object when `--json`.
    pub fn done<T: Serialize>(&self, sentence: &str, v: &T) {
        if self.json {
            self.line(v);
        } else {
            println!("{sentence}");
        }
    }
}
