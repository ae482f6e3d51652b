//! A small SMTP server for the tests, speaking the real protocol to lettre over TCP. It can
//! answer 451 (try later) to every n-th DATA and 550 (refused) to chosen recipients, and it
//! records every message it accepts.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
};

#[derive(Clone, Debug)]
pub struct Accepted {
    pub recipients: Vec<String>,
    pub message_id: String,
    pub data: String,
}

#[derive(Default)]
pub struct Behaviour {
    /// Answer 451 to every n-th DATA (counted across connections); 0 never.
    pub fail_every_nth_data: usize,
    /// Recipients refused with 550.
    pub refuse: Vec<String>,
    /// How long the answer to a message's end is held back: a slow server.
    pub hold_data: std::time::Duration,
}

#[derive(Default)]
struct State {
    behaviour: Behaviour,
    /// While set, MAIL FROM gets 530 (authentication required): a setup problem.
    require_auth: AtomicBool,
    data_commands: AtomicUsize,
    failed_data: AtomicUsize,
    accepted: Mutex<Vec<Accepted>>,
}

pub struct FakeSmtp {
    pub port: u16,
    state: Arc<State>,
}

impl FakeSmtp {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP server");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            behaviour,
            ..State::default()
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, Arc::clone(&shared)));
            }
        });
        Self { port, state }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.accepted.lock().unwrap().clone()
    }

    pub fn set_require_auth(&self, on: bool) {
        self.state.require_auth.store(on, Ordering::SeqCst);
    }

    /// Messages received to their end (answered, or being held back).
    pub fn data_commands(&self) -> usize {
        self.state.data_commands.load(Ordering::SeqCst)
    }

    pub fn failed_data_commands(&self) -> usize {
        self.state.failed_data.load(Ordering::SeqCst)
    }
}

async fn session(stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 fake.test ESMTP\r\n").await?;
    let mut recipients = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250 fake.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            recipients.clear();
            if state.require_auth.load(Ordering::SeqCst) {
                b"530 5.7.0 authentication required\r\n"
            } else {
                b"250 OK\r\n"
            }
        } else if upper.starts_with("RCPT TO:") {
            let address = line[8..]
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned();
            if state.behaviour.refuse.contains(&address) {
                b"550 5.1.1 no such mailbox\r\n"
            } else {
                recipients.push(address);
                b"250 OK\r\n"
            }
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            let n = state.data_commands.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(state.behaviour.hold_data).await;
            let every = state.behaviour.fail_every_nth_data;
            if every > 0 && n.is_multiple_of(every) {
                state.failed_data.fetch_add(1, Ordering::SeqCst);
                b"451 4.3.0 try again later\r\n"
            } else {
                let message_id = data
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Message-ID:")
                            .or_else(|| l.strip_prefix("Message-Id:"))
                    })
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                state.accepted.lock().unwrap().push(Accepted {
                    recipients: std::mem::take(&mut recipients),
                    message_id,
                    data,
                });
                b"250 OK queued\r\n"
            }
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            recipients.clear();
            b"250 OK\r\n"
        } else {
            b"502 command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
