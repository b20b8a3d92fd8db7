//! The command lines explain themselves: every argument of every command of
//! `kobo-coord` and `kobo-agent` has a help text (a walk of the whole clap
//! tree), the bash completion script loads, and the man pages render with
//! groff and name every subcommand.

use std::path::Path;

use kobo_tests::cluster::binary;

/// Every argument (flags and positionals; hidden ones are exempt) and every
/// subcommand under `command` that has no help text, with its path.
fn without_help(command: &clap::Command, path: &str, out: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "help" || id == "version" || arg.is_hide_set() {
            continue;
        }
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            let shown = if arg.is_positional() {
                format!("<{id}>")
            } else {
                format!("--{}", arg.get_long().unwrap_or(id))
            };
            out.push(format!("{path} {shown}"));
        }
    }
    for sub in command.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            out.push(format!("{path} {} (the command itself)", sub.get_name()));
        }
        without_help(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

/// The (nested) subcommand paths, `jobs`, `apikey-create`, …, as the man
/// pages name them.
fn subcommand_paths(command: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let path = format!("{prefix}{}", sub.get_name());
        out.push(path.clone());
        subcommand_paths(sub, &format!("{path}-"), out);
    }
}

#[test]
fn every_argument_of_both_binaries_has_a_help_text() {
    let mut missing = Vec::new();
    for command in [kobo_coord::command(), kobo_agent::command()] {
        command.clone().debug_assert();
        let name = command.get_name().to_string();
        let mut command = command;
        command.build(); // propagates global and flattened arguments
        without_help(&command, &name, &mut missing);
    }
    assert!(missing.is_empty(), "no help text:\n{}", missing.join("\n"));

    // The walk reaches nested commands, positionals and flattened arguments.
    let mut coord = kobo_coord::command();
    coord.build();
    let jobs = coord.find_subcommand("jobs").expect("jobs");
    for id in ["state", "kind", "node", "limit", "after", "api_key"] {
        assert!(
            jobs.get_arguments().any(|a| a.get_id() == id),
            "jobs --{id}"
        );
    }
    let create = coord
        .find_subcommand("apikey")
        .and_then(|a| a.find_subcommand("create"))
        .expect("apikey create");
    assert!(create.get_arguments().any(|a| a.get_id() == "weight"));
    let agent = kobo_agent::command();
    let join = agent.find_subcommand("join").expect("join");
    assert!(join.get_arguments().any(|a| a.is_positional()));
    assert!(join.get_arguments().any(|a| a.get_id() == "max_workers"));
}

fn run(program: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?}: {}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn completion_scripts_load_in_bash_and_exist_for_every_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["kobo-coord", "kobo-agent"] {
        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let script = run(&binary(name), &["completions", shell]);
            assert!(script.contains(name), "{name} {shell}:\n{script}");
        }
        let script = dir.path().join(format!("{name}.bash"));
        std::fs::write(&script, run(&binary(name), &["completions", "bash"])).expect("write");
        let output = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && complete -p {name}",
                script.display()
            ))
            .output()
            .expect("bash (Debian package bash)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains(name),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Renders a man page as text with groff, as `man` would.
fn render(page: &Path) -> String {
    let groff = Path::new("/usr/bin/groff");
    assert!(
        groff.exists(),
        "groff is missing: install the Debian package groff-base (scripts/install-test-deps does)"
    );
    run(
        groff,
        &["-man", "-Tutf8", "-P", "-cbou", &page.display().to_string()],
    )
}

#[test]
fn man_pages_render_and_name_every_subcommand() {
    for (name, command) in [
        ("kobo-coord", kobo_coord::command()),
        ("kobo-agent", kobo_agent::command()),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let listed = run(
            &binary(name),
            &["man", "--out", &dir.path().display().to_string()],
        );
        let mut subcommands = Vec::new();
        subcommand_paths(&command, "", &mut subcommands);
        assert!(!subcommands.is_empty());
        let main_page = render(&dir.path().join(format!("{name}.1")));
        assert!(main_page.contains(name), "{main_page}");
        for sub in &subcommands {
            let page = dir.path().join(format!("{name}-{sub}.1"));
            assert!(listed.contains(&page.display().to_string()), "{listed}");
            let text = render(&page);
            let words = sub.replace('-', " ");
            let last = words.rsplit(' ').next().expect("a name");
            assert!(text.contains(last), "{name}-{sub}.1:\n{text}");
            if !sub.contains('-') {
                assert!(
                    main_page.contains(sub.as_str()),
                    "{name}.1 lacks {sub}:\n{main_page}"
                );
            }
        }
        let pages = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(pages, subcommands.len() + 1, "{listed}");
    }
}
