//! The results table every bench prints (`| scenario | metric | value |
//! target | |`): informational rows and rows checked against a target.
//! Included by each bench with `#[path = "common/results.rs"] mod results;`.

use std::fmt::Write as _;

pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub value: String,
    pub target: String,
    /// `None`: informational, no target.
    pub pass: Option<bool>,
}

#[derive(Default)]
pub struct Results {
    pub rows: Vec<Row>,
    /// Each row is also printed to stderr as it is added.
    echo: bool,
}

#[allow(dead_code)] // each bench uses part of it
impl Results {
    /// A table whose rows are also printed to stderr as they come.
    pub fn echoing() -> Results {
        Results {
            rows: Vec::new(),
            echo: true,
        }
    }

    pub fn info(&mut self, scenario: &str, metric: impl Into<String>, value: String) {
        self.push(scenario, metric.into(), value, String::new(), None);
    }

    pub fn check(
        &mut self,
        scenario: &str,
        metric: impl Into<String>,
        value: String,
        target: impl Into<String>,
        pass: bool,
    ) {
        self.push(scenario, metric.into(), value, target.into(), Some(pass));
    }

    fn push(
        &mut self,
        scenario: &str,
        metric: String,
        value: String,
        target: String,
        pass: Option<bool>,
    ) {
        if self.echo {
            if target.is_empty() {
                eprintln!("  {scenario}: {metric}: {value}");
            } else {
                eprintln!("  {scenario}: {metric}: {value} (target {target})");
            }
        }
        self.rows.push(Row {
            scenario: scenario.to_string(),
            metric,
            value,
            target,
            pass,
        });
    }

    /// How many checked rows missed their target.
    pub fn missed(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    pub fn table(&self) -> String {
        let mut s =
            String::from("| scenario | metric | value | target | |\n|---|---|---:|---|---|\n");
        for r in &self.rows {
            let mark = match r.pass {
                None => "",
                Some(true) => "ok",
                Some(false) => "**MISSED**",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.scenario, r.metric, r.value, r.target, mark
            );
        }
        s
    }
}
