//! Which incidents are switched on, from `--incident NAME` flags and the `DEMO_INCIDENTS` variable.

/// The environment variable listing incidents, comma-separated (`hotspot,leak`).
pub const INCIDENTS_ENV: &str = "DEMO_INCIDENTS";

/// The switchable incidents. All off is the clean, fast service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Incidents {
    /// Responses are serialized by string formatting and re-checked after every field.
    pub hotspot: bool,
    /// Subscription handlers stay in the global registry after their client has gone.
    pub leak: bool,
    /// The cache lock is held across the upstream call, so requests queue behind it.
    pub contention: bool,
    /// As `contention`, and the cache janitor takes the two cache locks in the opposite order.
    pub deadlock: bool,
}

/// Every incident name, for help and error messages.
pub const NAMES: &[&str] = &["hotspot", "leak", "contention", "deadlock"];

impl Incidents {
    /// Switches on the incident called `name`.
    pub fn enable(&mut self, name: &str) -> Result<(), String> {
        match name.trim() {
            "hotspot" => self.hotspot = true,
            "leak" => self.leak = true,
            "contention" => self.contention = true,
            "deadlock" => self.deadlock = true,
            "" | "none" => {}
            other => {
                return Err(format!(
                    "unknown incident {other:?}; choose from {}",
                    NAMES.join(", ")
                ))
            }
        }
        Ok(())
    }

    /// Whether the cache lock is held across slow work (both lock incidents need it).
    pub fn holds_cache_lock_across_upstream(&self) -> bool {
        self.contention || self.deadlock
    }

    /// The names of the incidents that are on, for the start-up line.
    pub fn describe(&self) -> String {
        let on: Vec<&str> = [
            (self.hotspot, "hotspot"),
            (self.leak, "leak"),
            (self.contention, "contention"),
            (self.deadlock, "deadlock"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        if on.is_empty() {
            "none".into()
        } else {
            on.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_switch_incidents_on_and_unknown_names_are_refused() {
        let mut incidents = Incidents::default();
        incidents.enable("leak").unwrap();
        incidents.enable(" deadlock").unwrap();
        assert!(incidents.leak && incidents.deadlock && !incidents.hotspot);
        assert!(incidents.holds_cache_lock_across_upstream());
        assert_eq!(incidents.describe(), "leak,deadlock");
        assert!(incidents.enable("slow").unwrap_err().contains("hotspot"));
    }
}
