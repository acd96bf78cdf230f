//! What the fuzz targets share: an allocator that measures how much one input makes the code
//! under test allocate, so a target can hold it to a bound proportional to the input (a
//! decoder that trusts a length it read is caught here, long before it exhausts memory).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes live and the most live since the last
/// [`measure`].
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only counters move.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had allocated at once beyond what
/// was live when it started.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = f();
    let peak = PEAK.load(Ordering::Relaxed);
    (result, peak.saturating_sub(base))
}

/// The allocation bound every target holds its code to: a fixed allowance plus `per_byte`
/// bytes for each byte of input.
pub fn check_bound(what: &str, input_len: usize, allocated: usize, per_byte: usize) {
    let bound = (1 << 20) + per_byte * input_len;
    assert!(
        allocated <= bound,
        "{what}: {allocated} bytes allocated for {input_len} bytes of input (bound {bound})"
    );
}

/// Splits `data` into records of `[selector u8][length u16 LE][bytes]` (a short last record
/// takes what is left), for targets that feed a sequence of frames.
pub fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let [selector, rest @ ..] = data {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            _ => (rest.len(), rest),
        };
        let len = len.min(rest.len());
        out.push((*selector, &rest[..len]));
        data = &rest[len..];
    }
    out
}

/// For targets whose code contains panics by design (the room catches yrs's panics and has the
/// server reload the document): libFuzzer's panic hook aborts on every panic, caught or not, so
/// it is replaced by one that only remembers the panic (and prints it when
/// `TANDEM_FUZZ_SHOW_PANICS` is set). Run the target's body in [`guarded`], so a panic that
/// escapes is printed before `fuzz_target!` aborts on it.
pub fn contain_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let show = std::env::var_os("TANDEM_FUZZ_SHOW_PANICS").is_some();
        std::panic::set_hook(Box::new(move |info| {
            let what = format!("{info}");
            if show {
                eprintln!(
                    "contained? {what}\n{}",
                    std::backtrace::Backtrace::force_capture()
                );
            }
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = what;
            }
        }));
    });
}

static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Runs a target's body; a panic that escapes it is printed (with where it happened, as the
/// hook of [`contain_panics`] saw it) and passed on.
pub fn guarded(body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let last = LAST_PANIC.lock().map(|l| l.clone()).unwrap_or_default();
        eprintln!("a panic escaped the code under test: {last}");
        std::panic::resume_unwind(panic);
    }
}
