//! How long ember takes to refuse a key, by how close the key is to a real one (bench/security.sh): the timing
//! side channel of issue 27, measured in process where nothing but the comparison varies.
//!
//!     cargo run --release --example key_timing [KEYS] [ROUNDS]
//!
//! A keys file of KEYS keys (default 100) made of random hex; the classes of presented keys are the right key,
//! a near miss (its last character changed), a first-character miss, a key of another length, and a random key.
//! Each round times a batch of lookups per class in turn (the classes interleaved, so that the machine's drift
//! falls on all of them); the report is each class's median nanoseconds per lookup over ROUNDS rounds (default
//! 201), and its ratio to the random key's.

#[path = "stats.rs"]
mod stats;

use std::hint::black_box;
use std::time::Instant;

use ember::access::keys::KeySet;

const PER_BATCH: usize = 2_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(100, |a| a.parse().expect("KEYS is a count"));
    let rounds: usize = args.next().map_or(201, |a| a.parse().expect("ROUNDS is a count"));
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut hex = |len: usize| -> String {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from_digit((seed % 16) as u32, 16).unwrap()
            })
            .collect()
    };
    let keys: Vec<String> = (0..count).map(|_| hex(64)).collect();
    let file: String = keys.iter().enumerate().map(|(i, key)| format!("client{i}:{key}\n")).collect();
    let set = KeySet::parse(&file).expect("the generated keys parse");
    let right = keys[count / 2].clone();
    let flip = |c: char| if c == '0' { '1' } else { '0' };
    let near_miss = format!("{}{}", &right[..63], flip(right.chars().last().unwrap()));
    let first_miss = format!("{}{}", flip(right.chars().next().unwrap()), &right[1..]);
    let classes = [
        ("right key", right.clone()),
        ("near miss (last character)", near_miss),
        ("first character wrong", first_miss),
        ("other length (16 characters)", right[..16].to_string()),
        ("random key", hex(64)),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); classes.len()];
    for _ in 0..rounds {
        for (index, (_, presented)) in classes.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..PER_BATCH {
                black_box(set.find(black_box(presented)));
            }
            times[index].push(started.elapsed().as_nanos() as f64 / PER_BATCH as f64);
        }
    }
    let medians: Vec<f64> = times.iter_mut().map(|t| stats::median(t)).collect();
    let random = medians[classes.len() - 1];
    println!("KeySet::find over {count} keys, median of {rounds} rounds of {PER_BATCH} lookups per class");
    println!();
    println!("| presented | ns per lookup | vs a random key |");
    println!("|---|---|---|");
    for ((name, _), median) in classes.iter().zip(&medians) {
        println!("| {name} | {median:.0} | {:.3}x |", median / random);
    }
}
