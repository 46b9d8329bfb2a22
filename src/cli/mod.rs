//! The `admin`, `review` and `audit` commands.

pub mod accounts;
pub mod audit;
pub mod review;

use std::io::{BufRead, IsTerminal, Write};

use sealgate::config::Config;

pub use sealgate::admin::{parse_time, rfc3339};

/// Reads a password: one line from standard input with `from_stdin`, otherwise from the
/// terminal with echo off, asked twice.
pub fn read_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|error| format!("failed to read the password: {error}"))?;
        return non_empty(line);
    }
    let first = prompt_hidden("password: ")?;
    let second = prompt_hidden("password again: ")?;
    if first != second {
        return Err("the passwords differ".into());
    }
    non_empty(first)
}

fn non_empty(line: String) -> Result<String, String> {
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}

/// Prints `prompt` to standard error and reads a line from the terminal without echo.
fn prompt_hidden(prompt: &str) -> Result<String, String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let fd = libc::STDIN_FILENO;
    // SAFETY: `termios` is plain data that tcgetattr fills in. The caller checked that fd 0
    // is a terminal, and the saved settings are restored before returning.
    let saved = unsafe {
        let mut settings: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut settings) != 0 {
            return Err("failed to read the terminal settings".into());
        }
        let saved = settings;
        settings.c_lflag &= !libc::ECHO;
        libc::tcsetattr(fd, libc::TCSANOW, &settings);
        saved
    };
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: restores the settings read above on the same descriptor.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, &saved);
    }
    eprintln!();
    read.map_err(|error| format!("failed to read the password: {error}"))?;
    Ok(line)
}

/// Fails unless the queue database exists, so a mistyped config does not create an empty
/// one.
pub fn require_database(config: &Config) -> Result<(), String> {
    let path = config.database_path();
    if path.exists() {
        Ok(())
    } else {
        Err(format!(
            "no queue database at {}; check server.data_dir or start `sealgate serve` once",
            path.display()
        ))
    }
}
