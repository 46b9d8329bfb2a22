//! The `admin`, `review` and `audit` commands.

pub mod accounts;
pub mod audit;
pub mod review;

use std::io::{BufRead, IsTerminal, Write};

use sealgate::config::Config;

/// Parses `2026-12-03` (midnight UTC) or an RFC 3339 time into Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;

    if let Ok(moment) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((moment.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &date_format)
        .map(|date| date.midnight().assume_utc().unix_timestamp() * 1000)
        .map_err(|_| format!("invalid time {text:?}: expected 2026-12-03 or 2026-12-03T14:05:09Z"))
}

/// Formats Unix milliseconds as RFC 3339 in UTC, such as `2026-12-03T14:05:09.123Z`.
pub fn rfc3339(millis: i64) -> String {
    use time::format_description::well_known::Rfc3339;

    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|moment| moment.format(&Rfc3339).ok())
        .unwrap_or_else(|| millis.to_string())
}

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
