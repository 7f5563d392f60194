//! The environment variables that say where gclip's caches are, and how its switches read, in
//! one place: the image cache (`GCLIP_IMAGE_CACHE`), the converted-weights cache
//! (`GCLIP_CONVERTED_CACHE`), the Hugging Face hub cache (`HF_HUB_CACHE`, `HF_HOME`) and the
//! offline switches.
//!
//! gclip's own caches follow the XDG rule (`$XDG_CACHE_HOME/gclip/…`, else
//! `$HOME/.cache/gclip/…`); the hub cache follows huggingface_hub's, so that gclip, Python's
//! `transformers` and `open_clip` share one cache (it also reads `USERPROFILE` and expands a
//! leading `~`, as Python's `expanduser` does). Every rule reads the variables through an
//! [`Env`], so that tests give their own instead of changing the process's.

use std::path::PathBuf;
use std::time::Duration;

/// Environment variables, looked up by name; empty ones count as unset.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    var: &'a dyn Fn(&str) -> Option<String>,
}

fn process_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

static PROCESS: fn(&str) -> Option<String> = process_var;

impl<'a> Env<'a> {
    /// Variables looked up by `var`.
    pub fn new(var: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { var }
    }

    /// A variable's value, `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.var)(name).filter(|v| !v.is_empty())
    }

    /// Whether a switch is on (see [`is_true`]).
    pub fn is_true(&self, name: &str) -> bool {
        is_true(self.get(name))
    }

    /// A duration in seconds (fractions allowed); `None` unless a positive finite number.
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        self.get(name)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
    }

    /// The folder of gclip's cache `name`: `$XDG_CACHE_HOME/gclip/NAME`, else
    /// `$HOME/.cache/gclip/NAME`; `None` without either variable.
    fn gclip_cache(&self, name: &str) -> Option<PathBuf> {
        self.get("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| self.get("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("gclip").join(name))
    }

    /// Where images given by URL are kept: `GCLIP_IMAGE_CACHE`, else
    /// `$XDG_CACHE_HOME/gclip/images`, else `$HOME/.cache/gclip/images`, else
    /// `.cache/gclip/images` in the working directory.
    pub fn image_cache(&self) -> PathBuf {
        self.get("GCLIP_IMAGE_CACHE")
            .map(PathBuf::from)
            .or_else(|| self.gclip_cache("images"))
            .unwrap_or_else(|| PathBuf::from(".cache/gclip/images"))
    }

    /// Where converted weights (bf16, int8, and fp32 packed for the f32 panel kernel) are kept:
    /// `GCLIP_CONVERTED_CACHE` (`off`, `0`, `false` or `no`, any case: no cache), else
    /// `$XDG_CACHE_HOME/gclip/converted`, else `$HOME/.cache/gclip/converted`, else no cache.
    pub fn converted_cache(&self) -> Option<PathBuf> {
        match self.get("GCLIP_CONVERTED_CACHE") {
            Some(dir) => match dir.to_ascii_lowercase().as_str() {
                "off" | "0" | "false" | "no" => None,
                _ => Some(PathBuf::from(dir)),
            },
            None => self.gclip_cache("converted"),
        }
    }

    /// Whether image URLs may be fetched: not when `GCLIP_OFFLINE` or `HF_HUB_OFFLINE` (the
    /// switch users already set for models) is on.
    pub fn images_offline(&self) -> bool {
        self.is_true("GCLIP_OFFLINE") || self.is_true("HF_HUB_OFFLINE")
    }

    /// The home folder, as Python's `expanduser` finds it: `HOME`, else `USERPROFILE`.
    fn home(&self) -> Option<PathBuf> {
        self.get("HOME")
            .or_else(|| self.get("USERPROFILE"))
            .map(PathBuf::from)
    }

    /// `v` with a leading `~` replaced by the home folder.
    fn expand(&self, v: String) -> PathBuf {
        match (v.strip_prefix("~/"), self.home()) {
            (Some(rest), Some(h)) => h.join(rest),
            _ if v == "~" => self.home().unwrap_or_else(|| PathBuf::from(v)),
            _ => PathBuf::from(v),
        }
    }

    /// huggingface_hub's home: `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
    /// `~/.cache/huggingface`.
    pub fn hf_home(&self) -> PathBuf {
        match self.get("HF_HOME") {
            Some(h) => self.expand(h),
            None => self
                .get("XDG_CACHE_HOME")
                .map(|x| self.expand(x))
                .or_else(|| self.home().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface"),
        }
    }

    /// The hub cache: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub` (see
    /// [`Env::hf_home`]).
    pub fn hub_cache(&self) -> PathBuf {
        self.get("HF_HUB_CACHE")
            .or_else(|| self.get("HUGGINGFACE_HUB_CACHE"))
            .map(|c| self.expand(c))
            .unwrap_or_else(|| self.hf_home().join("hub"))
    }

    /// The file `hf auth login` saves the token in: `HF_TOKEN_PATH`, else `$HF_HOME/token`.
    pub fn hf_token_path(&self) -> PathBuf {
        self.get("HF_TOKEN_PATH")
            .map(|p| self.expand(p))
            .unwrap_or_else(|| self.hf_home().join("token"))
    }

    /// Whether the hub may not be contacted: `HF_HUB_OFFLINE`, or, when it is unset,
    /// `TRANSFORMERS_OFFLINE`.
    pub fn hub_offline(&self) -> bool {
        is_true(
            self.get("HF_HUB_OFFLINE")
                .or_else(|| self.get("TRANSFORMERS_OFFLINE")),
        )
    }
}

impl Env<'static> {
    /// This process's environment.
    pub fn process() -> Self {
        Self { var: &PROCESS }
    }
}

/// True when an environment switch is on: `1`, `ON`, `YES` or `TRUE`, any case (huggingface_hub's
/// rule, which gclip's own switches follow too).
pub fn is_true(v: Option<String>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment of `pairs` only.
    fn with(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_converted_cache_follows_the_environment() {
        let dir = |pairs: &'static [(&'static str, &'static str)]| {
            Env::new(&with(pairs)).converted_cache()
        };
        assert_eq!(
            dir(&[("GCLIP_CONVERTED_CACHE", "/c"), ("HOME", "/h")]),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            dir(&[("GCLIP_CONVERTED_CACHE", "off"), ("HOME", "/h")]),
            None
        );
        assert_eq!(
            dir(&[("GCLIP_CONVERTED_CACHE", "No"), ("HOME", "/h")]),
            None
        );
        assert_eq!(
            dir(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]),
            Some(PathBuf::from("/x/gclip/converted"))
        );
        assert_eq!(
            dir(&[("GCLIP_CONVERTED_CACHE", ""), ("HOME", "/h")]),
            Some(PathBuf::from("/h/.cache/gclip/converted"))
        );
        // gclip's own caches do not read USERPROFILE.
        assert_eq!(dir(&[("USERPROFILE", "/u")]), None);
        assert_eq!(dir(&[]), None);
    }

    #[test]
    fn the_image_cache_follows_the_environment() {
        let dir =
            |pairs: &'static [(&'static str, &'static str)]| Env::new(&with(pairs)).image_cache();
        assert_eq!(
            dir(&[("HOME", "/h")]),
            PathBuf::from("/h/.cache/gclip/images")
        );
        assert_eq!(
            dir(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]),
            PathBuf::from("/x/gclip/images")
        );
        assert_eq!(
            dir(&[("GCLIP_IMAGE_CACHE", "/c"), ("XDG_CACHE_HOME", "/x")]),
            PathBuf::from("/c")
        );
        // No ~ expansion: a literal path, as before.
        assert_eq!(
            dir(&[("GCLIP_IMAGE_CACHE", "~/c"), ("HOME", "/h")]),
            PathBuf::from("~/c")
        );
        assert_eq!(dir(&[]), PathBuf::from(".cache/gclip/images"));
    }

    #[test]
    fn the_hub_cache_follows_huggingface_hub() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            let e = with(pairs);
            let env = Env::new(&e);
            (env.hub_cache(), env.hf_token_path())
        };
        assert_eq!(
            env(&[("HOME", "/h")]),
            (
                PathBuf::from("/h/.cache/huggingface/hub"),
                PathBuf::from("/h/.cache/huggingface/token")
            )
        );
        assert_eq!(
            env(&[("USERPROFILE", "/u"), ("XDG_CACHE_HOME", "~/x")]).0,
            PathBuf::from("/u/x/huggingface/hub")
        );
        assert_eq!(
            env(&[
                ("HOME", "/h"),
                ("HF_HOME", "~/hf"),
                ("HF_TOKEN_PATH", "~/t")
            ]),
            (PathBuf::from("/h/hf/hub"), PathBuf::from("/h/t"))
        );
        assert_eq!(
            env(&[
                ("HF_HOME", "/hf"),
                ("HUGGINGFACE_HUB_CACHE", "/old"),
                ("HF_HUB_CACHE", "")
            ])
            .0,
            PathBuf::from("/old")
        );
        assert_eq!(
            env(&[("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_HUB_CACHE", "/new")]).0,
            PathBuf::from("/new")
        );
        assert_eq!(env(&[]).0, PathBuf::from(".cache/huggingface/hub"));
    }

    #[test]
    fn switches() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            let e = with(pairs);
            let env = Env::new(&e);
            (env.hub_offline(), env.images_offline())
        };
        assert_eq!(env(&[]), (false, false));
        assert_eq!(env(&[("HF_HUB_OFFLINE", " yes ")]), (true, true));
        assert_eq!(env(&[("GCLIP_OFFLINE", "On")]), (false, true));
        assert_eq!(env(&[("TRANSFORMERS_OFFLINE", "1")]), (true, false));
        // HF_HUB_OFFLINE, when set, decides alone.
        assert_eq!(
            env(&[("HF_HUB_OFFLINE", "0"), ("TRANSFORMERS_OFFLINE", "1")]),
            (false, false)
        );
        assert!(!is_true(Some("2".into())));
        let e = with(&[("A", "2.5"), ("B", "0"), ("C", "inf"), ("D", "x")]);
        let env = Env::new(&e);
        assert_eq!(env.seconds("A"), Some(Duration::from_millis(2500)));
        for unusable in ["B", "C", "D", "E"] {
            assert_eq!(env.seconds(unusable), None, "{unusable}");
        }
    }
}
