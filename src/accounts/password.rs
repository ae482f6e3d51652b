//! Password hashing with argon2id, off the async runtime and bounded.
//!
//! A hash costs ~19 MiB and tens of milliseconds of one core. Hashes run on a few threads of
//! their own (one per core but one: a core is always left to serve pages), and a request waits
//! at most `QUEUE_TIMEOUT` for one, so a flood of logins queues here instead of starving
//! `/health` and the pages. Dedicated threads rather than tokio's blocking pool: every
//! blocking-pool thread that ever hashed keeps its own 19 MiB malloc arena, which took a
//! login flood to 266 MiB of RSS; a fixed set of threads keeps it to one arena each.
//! The hashing threads run at a lower priority (nice 10) than the runtime's.
//! Each thread also keeps its 19 MiB of argon2 memory for the next hash instead of
//! allocating it every time: glibc would otherwise keep freed blocks around (its mmap
//! threshold grows after the first free), measured at 89 MiB RSS after a login flood.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use subtle::ConstantTimeEq as _;
use tokio::sync::{Semaphore, oneshot};

use crate::domain::NewPassword;

/// OWASP's argon2id recommendation: 19 MiB, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// How long a request waits for a free hashing slot before it is told to come back later.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// A hash of a random password with the parameters above. Unknown emails are checked against
/// it, so they cost the same time as a real account (a unit test keeps it in step).
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$YWkzUjB0cU9lU2hMdE9VWg$9kF8/rQq5aO6oM1b0m9l5S3mHeC7gE4h2J5hvX0mYQE";

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every hashing slot stayed busy for `QUEUE_TIMEOUT`: the server is overloaded.
    #[error("password hashing is saturated")]
    Busy,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

type Work = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct Passwords {
    /// One permit per hashing thread: holding one means a thread is free for the work.
    slots: Arc<Semaphore>,
    work: mpsc::Sender<Work>,
}

impl Passwords {
    /// One hashing slot per core but one, and at least one.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_slots(cores.saturating_sub(1).max(1))
    }

    /// Starts `threads` hashing threads; they end when the last clone of this is dropped.
    pub fn with_slots(threads: usize) -> Self {
        let (work, queue) = mpsc::channel::<Work>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("keel-hash-{n}"))
                .spawn(move || {
                    yield_to_requests();
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match next {
                            Ok(work) => work(),
                            Err(mpsc::RecvError) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(error = %error, "could not start a password hashing thread");
            }
        }
        Self {
            slots: Arc::new(Semaphore::new(threads)),
            work,
        }
    }

    /// The PHC string to store for `password`.
    pub async fn hash(&self, password: &NewPassword) -> Result<String, HashError> {
        self.hash_unchecked(password.expose().to_owned()).await
    }

    /// A new hash, with today's parameters, of a password that just verified against a hash
    /// made with older ones (see [`is_current`]); it met the rules of its day.
    pub async fn rehash(&self, password: &str) -> Result<String, HashError> {
        self.hash_unchecked(password.to_owned()).await
    }

    async fn hash_unchecked(&self, password: String) -> Result<String, HashError> {
        self.run(move || {
            let salt: [u8; 16] = rand::random();
            let params = params();
            let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
            compute(
                Algorithm::Argon2id,
                Version::V0x13,
                &params,
                password.as_bytes(),
                &salt,
                &mut output,
            )?;
            let phc = |e| anyhow!("encoding a password hash: {e}");
            let hash = PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(|e| anyhow!("{e}"))?,
                salt: Some(Salt::new(&salt).map_err(phc)?),
                hash: Some(Output::new(&output).map_err(phc)?),
            };
            Ok(hash.to_string())
        })
        .await
    }

    /// Whether `password` matches `stored`. With no stored hash (unknown email) a dummy hash
    /// is checked anyway and the answer is `false`, in the same time.
    pub async fn verify(&self, password: &str, stored: Option<String>) -> Result<bool, HashError> {
        let password = password.to_owned();
        self.run(move || {
            let known = stored.is_some();
            let stored = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
            let matches = matches(password.as_bytes(), &stored)?;
            Ok(known && matches)
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashError> {
        let slot = tokio::time::timeout(QUEUE_TIMEOUT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .context("the hashing semaphore is closed")?;
        let (done, result) = oneshot::channel();
        // The slot travels with the work: a request that gives up (its client left) does not
        // free a slot while its hash still waits or runs, so the backlog stays bounded.
        let job: Work = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err(anyhow!("password hashing panicked")));
            drop(slot);
            let _ = done.send(outcome);
        });
        self.work
            .send(job)
            .map_err(|_| anyhow!("the password hashing threads are gone"))?;
        let result = result
            .await
            .context("the password hashing thread dropped the work")??;
        Ok(result)
    }
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `stored` was made with today's algorithm and parameters. A fork that raises the
/// cost gets every account upgraded at its next login.
pub fn is_current(stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let current = ParamsString::try_from(&params()).map(|p| p.to_string());
    hash.algorithm == Algorithm::Argon2id.ident()
        && hash.version == Some(Version::V0x13.into())
        && current.is_ok_and(|current| current == hash.params.to_string())
}

/// Niceness of the hashing threads: under a login flood the scheduler favours the threads
/// that serve requests, so logins slow down before pages and `/health` do.
const HASHING_NICENESS: libc::c_int = 10;

#[cfg(target_os = "linux")]
fn yield_to_requests() {
    // SAFETY: setpriority only changes scheduling; on Linux, PRIO_PROCESS with id 0 names the
    // calling thread alone (threads are scheduled as tasks of their own).
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICENESS) } != 0;
    if failed {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower the hashing threads' priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_requests() {}

fn params() -> Params {
    // Constant parameters, valid (the unit tests hash with them).
    Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid argon2 parameters")
}

/// Whether `password` hashes to the PHC string `stored`, with the parameters written in it
/// (so hashes made with older parameters still verify).
fn matches(password: &[u8], stored: &str) -> anyhow::Result<bool> {
    let malformed = |e: &dyn std::fmt::Display| anyhow!("a stored password hash is malformed: {e}");
    let hash = PasswordHash::new(stored).map_err(|e| malformed(&e))?;
    let algorithm = Algorithm::try_from(hash.algorithm.as_str()).map_err(|e| malformed(&e))?;
    let version = match hash.version {
        Some(version) => Version::try_from(version).map_err(|e| malformed(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).map_err(|e| malformed(&e))?;
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return Err(malformed(&"no salt or no hash"));
    };
    let mut output = vec![0u8; expected.as_bytes().len()];
    compute(algorithm, version, &params, password, salt, &mut output)?;
    Ok(output.ct_eq(expected.as_bytes()).into())
}

thread_local! {
    /// This thread's argon2 working memory, kept from one hash to the next.
    static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// argon2 of `password` and `salt` into `output`, in this thread's kept memory.
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    output: &mut [u8],
) -> anyhow::Result<()> {
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params.clone());
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon2
            .hash_password_into_with_memory(password, salt, output, &mut memory[..blocks])
            .map_err(|e| anyhow!("hashing a password: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(raw: &str) -> NewPassword {
        NewPassword::parse(raw.to_owned(), "someone@example.com").unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::with_slots(1);
        let hash = passwords.hash(&password("correct horse battery")).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(
            passwords
                .verify("correct horse battery", Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !passwords
                .verify("correct horse batterY", Some(hash.clone()))
                .await
                .unwrap()
        );
        let again = passwords.hash(&password("correct horse battery")).await.unwrap();
        assert_ne!(hash, again, "every hash has its own salt");
    }

    #[tokio::test]
    async fn unknown_accounts_never_match_and_use_current_parameters() {
        let passwords = Passwords::with_slots(1);
        assert!(!passwords.verify("anything at all", None).await.unwrap());
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let real = passwords.hash(&password("whatever it is")).await.unwrap();
        let real = PasswordHash::new(&real).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(
            dummy.params.to_string(),
            real.params.to_string(),
            "the dummy hash costs what a real one does"
        );
    }

    #[tokio::test]
    async fn hashes_agree_with_the_argon2_crates_own_hasher_and_verifier() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let passwords = Passwords::with_slots(1);
        let ours = passwords.hash(&password("shared secret one")).await.unwrap();
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(reference.verify_password(b"shared secret one", &parsed).is_ok());
        assert!(reference.verify_password(b"shared secret two", &parsed).is_err());

        // Made by the crate, with other (older, cheaper) parameters: verified with those.
        let older = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 3, 1, None).unwrap(),
        );
        let theirs = older
            .hash_password_with_salt(b"legacy secret", b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert!(
            passwords
                .verify("legacy secret", Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("legacy secreT", Some(theirs)).await.unwrap());
    }

    #[tokio::test]
    async fn only_hashes_with_todays_parameters_are_current() {
        use argon2::password_hash::PasswordHasher as _;
        let passwords = Passwords::with_slots(1);
        let today = passwords.hash(&password("a current one")).await.unwrap();
        assert!(is_current(&today));
        assert!(is_current(DUMMY_HASH));
        let older = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 3, 1, None).unwrap(),
        );
        let old = older
            .hash_password_with_salt(b"x", b"0123456789abcdef")
            .unwrap()
            .to_string();
        assert!(!is_current(&old));
        assert!(!is_current("garbage"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_a_lower_priority_than_the_runtime() {
        let passwords = Passwords::with_slots(1);
        // SAFETY: getpriority only reads the calling (hashing) thread's niceness.
        let niceness = passwords
            .run(|| Ok(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }))
            .await
            .unwrap();
        assert!(niceness >= HASHING_NICENESS, "niceness {niceness}");
    }

    #[tokio::test]
    async fn a_malformed_stored_hash_is_an_error_not_a_match() {
        let passwords = Passwords::with_slots(1);
        assert!(passwords.verify("x", Some("not a hash".into())).await.is_err());
    }
}
