//! Latency distributions: weighted mixtures of Pareto and exponential
//! components, in milliseconds, as in Bailis et al. (PBS, VLDB 2012).
//!
//! The same [`Mixture`] drives the simulator's network legs and the `pbs`
//! command; a [`LatencyModel`] (four legs: write, ack, read, response) is read
//! from TOML:
//!
//! ```toml
//! [write]
//! components = [{ weight = 0.9, pareto = { xm = 0.2, alpha = 8.0 } }, { weight = 0.1, exponential = { lambda = 1.5 } }]
//! ```

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::Deserialize;

/// A Pareto distribution: `P(X > x) = (xm / x)^alpha` for `x >= xm`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pareto {
    /// Scale (the minimum), ms.
    pub xm: f64,
    /// Shape: smaller is a heavier tail.
    pub alpha: f64,
}

/// An exponential distribution with rate `lambda` (mean `1 / lambda` ms).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exponential {
    /// Rate, per ms.
    pub lambda: f64,
}

/// One weighted component of a mixture: exactly one of `pareto` and
/// `exponential`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Relative weight (> 0; weights need not sum to 1).
    pub weight: f64,
    /// A Pareto component.
    pub pareto: Option<Pareto>,
    /// An exponential component.
    pub exponential: Option<Exponential>,
}

/// The distribution of one component, once validated.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Pareto { xm: f64, inverse_alpha: f64 },
    Exponential { mean: f64 },
}

/// A weighted mixture of components, validated, ready to sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixture {
    /// Cumulative weights, normalised to end at 1.
    cumulative: Vec<f64>,
    shapes: Vec<Shape>,
}

/// A mixture as written in TOML.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MixtureSpec {
    /// The components.
    pub components: Vec<Component>,
}

impl MixtureSpec {
    /// Checks every parameter and builds the sampler.
    ///
    /// # Errors
    ///
    /// The first invalid parameter, naming `leg` and the component (1-based).
    pub fn build(&self, leg: &str) -> Result<Mixture> {
        if self.components.is_empty() {
            bail!("latency leg [{leg}]: no components");
        }
        let mut weights = Vec::with_capacity(self.components.len());
        let mut shapes = Vec::with_capacity(self.components.len());
        for (position, component) in self.components.iter().enumerate() {
            let at = format!("latency leg [{leg}], component {}", position + 1);
            if !(component.weight.is_finite() && component.weight > 0.0) {
                bail!("{at}: weight must be > 0 (got {})", component.weight);
            }
            let shape = match (component.pareto, component.exponential) {
                (Some(p), None) => {
                    if !(p.xm.is_finite() && p.xm > 0.0) {
                        bail!("{at}: pareto xm must be > 0 (got {})", p.xm);
                    }
                    if !(p.alpha.is_finite() && p.alpha > 0.0) {
                        bail!("{at}: pareto alpha must be > 0 (got {})", p.alpha);
                    }
                    Shape::Pareto {
                        xm: p.xm,
                        inverse_alpha: 1.0 / p.alpha,
                    }
                }
                (None, Some(e)) => {
                    if !(e.lambda.is_finite() && e.lambda > 0.0) {
                        bail!("{at}: exponential lambda must be > 0 (got {})", e.lambda);
                    }
                    Shape::Exponential {
                        mean: 1.0 / e.lambda,
                    }
                }
                (Some(_), Some(_)) => bail!("{at}: give pareto or exponential, not both"),
                (None, None) => bail!("{at}: give one of pareto or exponential"),
            };
            weights.push(component.weight);
            shapes.push(shape);
        }
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|w| {
                running += w / total;
                running
            })
            .collect();
        *cumulative.last_mut().expect("at least one component") = 1.0;
        Ok(Mixture { cumulative, shapes })
    }
}

impl Mixture {
    /// A mixture of one Pareto component.
    pub fn pareto(xm: f64, alpha: f64) -> Mixture {
        Mixture {
            cumulative: vec![1.0],
            shapes: vec![Shape::Pareto {
                xm,
                inverse_alpha: 1.0 / alpha,
            }],
        }
    }

    /// This mixture with `other` added at relative weight `weight` (0..1).
    pub fn blended(&self, other: &Mixture, weight: f64) -> Mixture {
        assert!((0.0..1.0).contains(&weight), "blend weight in 0..1");
        let mut cumulative: Vec<f64> = self.cumulative.iter().map(|c| c * (1.0 - weight)).collect();
        let base = 1.0 - weight;
        cumulative.extend(other.cumulative.iter().map(|c| base + c * weight));
        *cumulative.last_mut().expect("non-empty") = 1.0;
        let mut shapes = self.shapes.clone();
        shapes.extend(other.shapes.iter().copied());
        Mixture { cumulative, shapes }
    }

    /// One sample, in ms.
    pub fn sample_ms<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        let pick: f64 = rng.random();
        let index = self
            .cumulative
            .iter()
            .position(|&c| pick < c)
            .unwrap_or(self.cumulative.len() - 1);
        // 1 - U lies in (0, 1]: no log(0), no division by zero.
        let uniform = 1.0 - rng.random::<f64>();
        match self.shapes[index] {
            Shape::Pareto { xm, inverse_alpha } => xm / uniform.powf(inverse_alpha),
            Shape::Exponential { mean } => -uniform.ln() * mean,
        }
    }

    /// One sample in whole microseconds, at least 1 and at most `cap_us`.
    pub fn sample_us<R: Rng + ?Sized>(&self, rng: &mut R, cap_us: u64) -> u64 {
        let us = self.sample_ms(rng) * 1000.0;
        if us.is_finite() {
            (us as u64).clamp(1, cap_us)
        } else {
            cap_us
        }
    }
}

/// The four legs of a quorum operation, as in the PBS paper's WARS model.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyModel {
    /// Write request, coordinator → replica.
    pub write: Mixture,
    /// Write acknowledgement, replica → coordinator.
    pub ack: Mixture,
    /// Read request.
    pub read: Mixture,
    /// Read response.
    pub response: Mixture,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSpec {
    write: MixtureSpec,
    ack: MixtureSpec,
    read: MixtureSpec,
    response: MixtureSpec,
}

impl LatencyModel {
    /// Parses and validates a model from TOML text.
    ///
    /// # Errors
    ///
    /// TOML syntax, a missing leg, or an invalid parameter (naming the leg).
    pub fn from_toml(text: &str) -> Result<LatencyModel> {
        let spec: ModelSpec = toml::from_str(text).context("latency model")?;
        Ok(LatencyModel {
            write: spec.write.build("write")?,
            ack: spec.ack.build("ack")?,
            read: spec.read.build("read")?,
            response: spec.response.build("response")?,
        })
    }

    /// Reads a model file.
    ///
    /// # Errors
    ///
    /// I/O, or anything [`LatencyModel::from_toml`] refuses.
    pub fn from_file(path: &std::path::Path) -> Result<LatencyModel> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading latency model {}", path.display()))?;
        LatencyModel::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const GOOD: &str = r#"
[write]
components = [{ weight = 0.9, pareto = { xm = 0.2, alpha = 8.0 } }, { weight = 0.1, exponential = { lambda = 1.5 } }]
[ack]
components = [{ weight = 1.0, exponential = { lambda = 2.0 } }]
[read]
components = [{ weight = 1.0, pareto = { xm = 0.1, alpha = 3.0 } }]
[response]
components = [{ weight = 1.0, exponential = { lambda = 2.0 } }]
"#;

    #[test]
    fn a_valid_model_parses() {
        let model = LatencyModel::from_toml(GOOD).unwrap();
        assert_eq!(model.write.shapes.len(), 2);
    }

    #[test]
    fn invalid_models_name_the_leg_and_the_rule() {
        let cases = [
            (
                "weight = 0.9",
                "weight = 0.0",
                "[write], component 1: weight must be > 0",
            ),
            (
                "xm = 0.2",
                "xm = -1.0",
                "[write], component 1: pareto xm must be > 0",
            ),
            (
                "alpha = 3.0",
                "alpha = 0.0",
                "[read], component 1: pareto alpha must be > 0",
            ),
            (
                "{ weight = 1.0, exponential = { lambda = 2.0 } }]\n[read]",
                "{ weight = 1.0, exponential = { lambda = 0.0 } }]\n[read]",
                "[ack], component 1: exponential lambda must be > 0",
            ),
            (
                "[response]\ncomponents",
                "[responses]\ncomponents",
                "response",
            ),
        ];
        for (from, to, expected) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "the case edits the model: {from}");
            let error = format!("{:#}", LatencyModel::from_toml(&text).unwrap_err());
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
        let both = r#"components = [{ weight = 1.0, pareto = { xm = 1.0, alpha = 1.0 }, exponential = { lambda = 1.0 } }]"#;
        let spec: MixtureSpec = toml::from_str(both).unwrap();
        assert!(format!("{:#}", spec.build("ack").unwrap_err()).contains("not both"));
    }

    #[test]
    fn samples_follow_the_components() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let pareto = Mixture::pareto(2.0, 3.0);
        let samples: Vec<f64> = (0..20_000).map(|_| pareto.sample_ms(&mut rng)).collect();
        assert!(samples.iter().all(|&s| s >= 2.0), "Pareto never below xm");
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!(
            (mean - 3.0).abs() < 0.15,
            "Pareto(2,3) mean is 3, got {mean}"
        );
        let exponential = MixtureSpec {
            components: vec![Component {
                weight: 1.0,
                pareto: None,
                exponential: Some(Exponential { lambda: 0.5 }),
            }],
        }
        .build("x")
        .unwrap();
        let mean = (0..20_000)
            .map(|_| exponential.sample_ms(&mut rng))
            .sum::<f64>()
            / 20_000.0;
        assert!((mean - 2.0).abs() < 0.1, "Exp(0.5) mean is 2, got {mean}");
    }

    #[test]
    fn blending_keeps_both_components() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let fast = Mixture::pareto(1.0, 50.0);
        let slow = Mixture::pareto(100.0, 50.0);
        let blend = fast.blended(&slow, 0.25);
        let slow_count = (0..10_000)
            .filter(|_| blend.sample_ms(&mut rng) > 50.0)
            .count();
        assert!(
            (2_200..2_800).contains(&slow_count),
            "about a quarter: {slow_count}"
        );
    }
}
