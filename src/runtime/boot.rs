//! What every podvm VM boots with, whoever runs it (`podvm run`'s launch or a sandbox): the
//! kernel command line and the guest's console log.

use std::io::Write;
use std::path::Path;

use crate::vmm::console_log::ConsoleLog;

/// Kernel command line every podvm guest gets: console on COM1 (the only UART), a reboot that
/// triple-faults (KVM reports it as a shutdown), and panics that reboot at once. The VMM appends
/// its virtio-mmio devices and the agent's vsock port.
pub const BASE_CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=t panic=-1 rdinit=/init";

/// The guest kernel's command line: [`BASE_CMDLINE`], `quiet` unless the console is watched,
/// then `extra`.
pub fn kernel_cmdline(quiet: bool, extra: &[String]) -> String {
    let mut cmdline = BASE_CMDLINE.to_string();
    if quiet {
        cmdline.push_str(" quiet");
    }
    for arg in extra {
        cmdline.push(' ');
        cmdline.push_str(arg);
    }
    cmdline
}

/// Creates the guest's console log at `path` (see [`ConsoleLog`]: bounded, the last lines
/// always kept), also written to `echo` when given: 0600, never through a symlink, and with
/// `new` only if nothing is there yet (O_EXCL).
pub fn create_console_log(
    path: &Path,
    echo: Option<Box<dyn Write + Send>>,
    new: bool,
) -> std::io::Result<ConsoleLog> {
    let file = crate::private::create_file(path, new)?;
    Ok(ConsoleLog::new(file, echo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_quiet_unless_watched() {
        let extra = vec!["loglevel=7".to_string()];
        assert_eq!(
            kernel_cmdline(true, &extra),
            format!("{BASE_CMDLINE} quiet loglevel=7")
        );
        assert_eq!(kernel_cmdline(false, &[]), BASE_CMDLINE);
    }
}
