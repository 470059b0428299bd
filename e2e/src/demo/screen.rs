//! Where frames go. On a terminal the live frame is redrawn in place (ANSI cursor moves);
//! anywhere else (a pipe, CI's log) only a one-line summary is appended, and only when it
//! changes, so the log reads as a progress record.

use std::io::{IsTerminal, Write};

use super::view::{self, Paint, Snapshot, Style};

/// The demo's output.
pub struct Screen {
    tty: bool,
    /// Lines of the live frame on screen now, to move back over on the next draw.
    drawn: usize,
    /// The last line appended in plain mode.
    last_line: String,
}

impl Screen {
    /// Redraws in place when standard output is a terminal.
    pub fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            drawn: 0,
            last_line: String::new(),
        }
    }

    /// Colours, when drawing to a terminal.
    pub fn paint(&self) -> Paint {
        Paint(self.tty)
    }

    /// Shows `snap`: redrawn in place on a terminal, else a line when something changed.
    pub fn draw(&mut self, snap: &Snapshot) {
        if self.tty {
            let style = Style {
                color: true,
                width: terminal_width(),
            };
            let lines = view::frame(snap, style);
            let mut out = String::new();
            if self.drawn > 0 {
                // Up to the frame's first line, then clear everything below.
                out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
            }
            for line in &lines {
                out.push_str(line);
                out.push('\n');
            }
            self.drawn = lines.len();
            print_flush(&out);
        } else {
            let line = view::line(snap);
            if line != self.last_line {
                print_flush(&format!("{line}\n"));
                self.last_line = line;
            }
        }
    }

    /// Leaves the live frame where it is; the next draw starts below it. In plain mode the
    /// final frame is printed once in full, so a log holds the end state of every act.
    pub fn keep(&mut self, snap: &Snapshot) {
        if !self.tty {
            let style = Style {
                color: false,
                width: 160,
            };
            print_flush(&format!("{}\n", view::frame(snap, style).join("\n")));
        }
        self.drawn = 0;
        self.last_line.clear();
    }

    /// Prints a line that stays, below any live frame.
    pub fn say(&mut self, text: &str) {
        self.drawn = 0;
        print_flush(&format!("{text}\n"));
    }
}

impl Default for Screen {
    fn default() -> Self {
        Self::new()
    }
}

fn print_flush(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the reader went away) must not stop the teardown.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Columns of the terminal on standard output; 100 when it cannot be told.
fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct passed, which lives here.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        100
    }
}
