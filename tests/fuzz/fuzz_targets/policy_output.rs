//! What a policy plugin returns (any list of u32, for any number of candidate nodes) as routing
//! takes it: valid indices only, each once.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&nodes, rest)) = data.split_first() else {
        return;
    };
    let nodes = usize::from(nodes);
    let order: Vec<u32> = rest
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(ranked) = tidecast::plugin::policy::ranking(&order, nodes) {
        assert!(!ranked.is_empty() && ranked.len() <= nodes);
        let mut seen = vec![false; nodes];
        for i in ranked {
            assert!(i < nodes && !std::mem::replace(&mut seen[i], true));
        }
    }
});
