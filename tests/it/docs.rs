//! The README must stay true: every flag of every command is documented, and the two commands it
//! gives a newcomer are the ones the scripts and CI actually run.

use std::path::Path;

use clap::CommandFactory;
use rebound::cli::Cli;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

fn all_flags(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            if long != "help" && long != "version" {
                out.push((path.to_string(), format!("--{long}")));
            }
        } else if let Some(short) = arg.get_short() {
            out.push((path.to_string(), format!("-{short}")));
        }
    }
    for sub in cmd.get_subcommands() {
        all_flags(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_flag_is_documented_in_the_readme() {
    let readme = read("README.md");
    let mut flags = Vec::new();
    all_flags(&Cli::command(), "rebound", &mut flags);
    assert!(flags.len() > 20);
    let missing: Vec<String> = flags
        .iter()
        .filter(|(_, f)| !readme.contains(&format!("`{f}")))
        .map(|(cmd, f)| format!("{cmd} {f}"))
        .collect();
    assert!(
        missing.is_empty(),
        "flags missing from README.md: {missing:?}"
    );
}

#[test]
fn every_subcommand_is_documented_in_the_readme() {
    let readme = read("README.md");
    for sub in Cli::command().get_subcommands() {
        let name = sub.get_name();
        assert!(
            readme.contains(&format!("rebound {name}")),
            "README.md does not mention `rebound {name}`"
        );
    }
}

#[test]
fn the_readme_commands_are_the_ones_ci_and_the_demo_run() {
    let readme = read("README.md");
    assert!(readme.contains("scripts/demo") && readme.contains("scripts/test"));
    assert!(
        read(".ci/run").contains("scripts/test"),
        ".ci/run must run the README's test command"
    );
    assert!(read("scripts/test").contains("cargo test"));
    assert!(read("scripts/demo").contains("rebound demo"));
}
