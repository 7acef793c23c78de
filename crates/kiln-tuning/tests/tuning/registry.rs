//! The registry against everything that lists methods, and one generated module of tests per
//! registered method (`for_each_method!`), so that each method fails under its own name:
//! `Lora::applies_to_bert`, `Prefix::round_trips_through_json`, ...

use std::path::PathBuf;

use burn::tensor::Device;
use kiln_models::DeviceChoice;
use kiln_tuning::{MethodConfig, Registered, registry, tracked_report};

/// `method` with its defaults applied to the fixture `name` on an autodiff device. A method
/// that needs trained adapters (fusion) gets two fresh Pfeiffer-placed ones first.
fn apply_defaults(name: &str, method: &MethodConfig) {
    let device: Device = DeviceChoice::Cpu.device().expect("CPU backend").autodiff();
    let mut model = kiln_testkit::classifier(name, method, 2, &device);
    if <kiln_tuning::methods::FusionConfig as Registered>::NAME == method.name() {
        kiln_testkit::add_feed_forward_adapters(&mut model, &["first", "second"]);
    }
    let (model, report) = method
        .apply(model)
        .unwrap_or_else(|e| panic!("{} on {name}: {e}", method.label()));
    // What the method reports as trainable is exactly what tracks gradients.
    assert_eq!(
        tracked_report(&model),
        report,
        "{} on {name}",
        method.label()
    );
    assert!(report.trainable() > 0, "{} trains nothing", method.label());
    let trains_a_head = report
        .trainable_paths()
        .iter()
        .any(|path| path.starts_with("head."));
    assert!(
        trains_a_head,
        "{}: the task head must train",
        method.label()
    );
}

macro_rules! method_tests {
    ($($variant:ident => $module:ident :: $config:ident),* $(,)?) => {
        $(
            #[allow(non_snake_case)]
            mod $variant {
                use super::*;
                use kiln_tuning::methods::$config;

                fn config() -> MethodConfig {
                    MethodConfig::$variant($config::default())
                }

                #[test]
                fn is_found_by_its_name() {
                    let name = <$config as Registered>::NAME;
                    assert_eq!(MethodConfig::parse(name, &[]).expect("parses"), config());
                    assert_eq!(config().name(), name);
                }

                #[test]
                fn round_trips_through_json() {
                    let json = serde_json::to_string(&config()).expect("serialises");
                    let name = <$config as Registered>::NAME;
                    assert!(json.starts_with(&format!(r#"{{"method":"{name}""#)), "{json}");
                    let back: MethodConfig = serde_json::from_str(&json).expect("parses");
                    assert_eq!(back, config(), "{json}");
                }

                #[test]
                fn takes_its_own_options_and_refuses_others() {
                    let info = registry()
                        .into_iter()
                        .find(|m| m.name == <$config as Registered>::NAME)
                        .expect("listed");
                    let mut config = config();
                    for option in &info.options {
                        // A switch is set with "true"; a value option refuses an empty text
                        // or takes it (names), but never panics.
                        if option.value.is_none() {
                            config.set_option(option.flag, "true").expect("switch");
                        } else {
                            let _ = config.set_option(option.flag, "");
                        }
                    }
                    let foreign = registry()
                        .into_iter()
                        .flat_map(|m| m.options)
                        .find(|o| !info.options.iter().any(|own| own.flag == o.flag));
                    if let Some(foreign) = foreign {
                        let error = config
                            .set_option(foreign.flag, "1")
                            .expect_err("a foreign option is refused");
                        assert!(
                            error.to_string().contains(&format!("--{}", foreign.flag)),
                            "{error}"
                        );
                    }
                }

                #[test]
                fn applies_to_bert() {
                    apply_defaults("bert-tiny", &config());
                }

                #[test]
                fn applies_to_gpt2() {
                    apply_defaults("gpt2-tiny", &config());
                }
            }
        )*

        /// Every registry line, in order: what the generated modules above cover.
        const GENERATED: &[&str] = &[$(<kiln_tuning::methods::$config as Registered>::NAME),*];
    };
}

kiln_tuning::for_each_method!(method_tests);

#[test]
fn the_generated_tests_cover_the_registry() {
    let trained: Vec<&str> = registry()
        .into_iter()
        .filter(|m| m.command.is_none())
        .map(|m| m.name)
        .collect();
    assert_eq!(trained, GENERATED);
}

#[test]
fn every_method_has_a_section_in_the_docs() {
    let docs = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/methods.md"),
    )
    .expect("docs/methods.md");
    for method in registry() {
        let heading = docs.lines().any(|line| {
            line.starts_with('#')
                && line
                    .trim_start_matches('#')
                    .trim_start()
                    .split([' ', ':'])
                    .next()
                    == Some(method.name)
        });
        assert!(
            heading,
            "docs/methods.md has no section for `{}`",
            method.name
        );
    }
}

#[test]
fn registry_names_are_unique_and_every_option_is_documented() {
    let methods = registry();
    for (i, method) in methods.iter().enumerate() {
        assert!(
            methods[..i].iter().all(|m| m.name != method.name),
            "`{}` is registered twice",
            method.name
        );
        assert!(!method.summary.is_empty(), "{}: no summary", method.name);
        for option in &method.options {
            assert!(
                !option.help.is_empty(),
                "{} --{}: no help",
                method.name,
                option.flag
            );
            assert!(
                methods[..i]
                    .iter()
                    .flat_map(|m| &m.options)
                    .filter(|o| o.flag == option.flag)
                    .all(|o| o.value.is_none() == option.value.is_none()),
                "--{} is a switch for one method and takes a value for another",
                option.flag
            );
        }
    }
}
