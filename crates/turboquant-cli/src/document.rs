//! A long document of varied, ordinary prose, generated on demand, with one fact hidden in it.
//!
//! `needle` and `fidelity` need text of any length that a model reads naturally: not one
//! paragraph repeated (copies draw attention to their earlier copies, which is not what long
//! documents look like), and not a file that may be missing. The document describes made-up towns,
//! each paragraph assembled from its own random choices, so no two paragraphs are alike.

use crate::rng::SplitMix64;

/// The hidden fact and how it is asked for.
pub struct Needle {
    pub sentence: &'static str,
    pub question: &'static str,
    /// The answer words, in order.
    pub answer: &'static str,
}

pub const NEEDLE: Needle = Needle {
    sentence: "The secret passphrase for the archive is amber falcon lantern.",
    question: "What is the secret passphrase for the archive?",
    answer: "amber falcon lantern",
};

const NAMES: [&str; 24] = [
    "Aldermoor",
    "Brackenridge",
    "Caldwell",
    "Dunmore",
    "Eastwick",
    "Fernhollow",
    "Glenbrook",
    "Harrowgate",
    "Ivydale",
    "Juniper Falls",
    "Kingsbridge",
    "Larkspur",
    "Millbrook",
    "Northcote",
    "Oakhaven",
    "Pinecrest",
    "Queensford",
    "Ravenscar",
    "Stonehaven",
    "Thornbury",
    "Underhill",
    "Valebrook",
    "Westmere",
    "Yarrowby",
];
const RIVERS: [&str; 10] = [
    "Avon", "Calder", "Derwent", "Esk", "Frome", "Lune", "Nidd", "Ouse", "Tamar", "Wharfe",
];
const INDUSTRIES: [&str; 12] = [
    "fishing",
    "wool weaving",
    "clock making",
    "brewing",
    "shipbuilding",
    "pottery",
    "glass blowing",
    "printing",
    "cheese making",
    "timber",
    "rope making",
    "paper milling",
];
const SIGHTS: [&str; 12] = [
    "a covered market",
    "an old stone bridge",
    "a windmill",
    "a ruined abbey",
    "a botanical garden",
    "a lighthouse",
    "a clock tower",
    "a railway museum",
    "a walled garden",
    "a chain ferry",
    "a library with a painted ceiling",
    "a small observatory",
];
const SEASONS: [&str; 4] = ["spring", "summer", "autumn", "winter"];
const EVENTS: [&str; 10] = [
    "a fair",
    "a rowing race",
    "a music festival",
    "a harvest supper",
    "a lantern parade",
    "a book market",
    "a kite contest",
    "a choir competition",
    "a horse show",
    "a chess tournament",
];
const DIRECTIONS: [&str; 8] = [
    "north",
    "north-east",
    "east",
    "south-east",
    "south",
    "south-west",
    "west",
    "north-west",
];

/// One paragraph about one town.
fn paragraph(rng: &mut SplitMix64) -> String {
    let town = rng.pick(&NAMES);
    let other = rng.pick(&NAMES);
    let year = rng.range(1150, 1890);
    let people = rng.range(2, 90) * 100 + rng.range(0, 99);
    format!(
        "{town} lies {} kilometres {} of {other}, on the banks of the river {}. It was first \
         recorded in {year}, and today its {people} residents live mostly from {} and {}. \
         Visitors come for {} and {}, and in {} the town holds {} that fills every inn for a \
         week. The road from {other} is narrow, and locals still argue about who should pay to \
         widen it.\n\n",
        rng.range(3, 60),
        rng.pick(&DIRECTIONS),
        rng.pick(&RIVERS),
        rng.pick(&INDUSTRIES),
        rng.pick(&INDUSTRIES),
        rng.pick(&SIGHTS),
        rng.pick(&SIGHTS),
        rng.pick(&SEASONS),
        rng.pick(&EVENTS),
    )
}

/// Paragraphs from `seed`, until `fits(text)` says the next one would not fit; the needle goes
/// in at `depth` (0: first, 1: last), between paragraphs.
pub fn build(seed: u64, depth: Option<f64>, mut fits: impl FnMut(&str) -> bool) -> String {
    let mut rng = SplitMix64(seed);
    let mut paragraphs: Vec<String> = Vec::new();
    let needle = format!("{}\n\n", NEEDLE.sentence);
    let mut text = String::new();
    loop {
        let next = paragraph(&mut rng);
        let candidate = format!("{text}{next}{}", if depth.is_some() { &needle } else { "" });
        if !fits(&candidate) {
            break;
        }
        text.push_str(&next);
        paragraphs.push(next);
    }
    match depth {
        None => text,
        Some(depth) => {
            let at = ((paragraphs.len() as f64) * depth.clamp(0.0, 1.0)).round() as usize;
            paragraphs.insert(at.min(paragraphs.len()), needle);
            paragraphs.concat()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varied_deterministic_and_the_needle_sits_at_its_depth() {
        let a = build(7, Some(0.5), |t| t.len() < 20_000);
        let b = build(7, Some(0.5), |t| t.len() < 20_000);
        assert_eq!(a, b);
        assert!(a.len() < 20_000 && a.len() > 15_000);
        let at = a.find(NEEDLE.sentence).unwrap() as f64 / a.len() as f64;
        assert!((0.4..0.6).contains(&at), "needle at {at}");
        let paragraphs: Vec<&str> = a.split("\n\n").filter(|p| !p.is_empty()).collect();
        let mut unique = paragraphs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), paragraphs.len(), "no paragraph repeats");
        let start = build(7, Some(0.0), |t| t.len() < 5_000);
        assert!(start.starts_with(NEEDLE.sentence));
        assert!(!build(7, None, |t| t.len() < 5_000).contains("passphrase"));
    }
}
