//! A browser for the tests: keeps its cookies, follows no redirects, fills in CSRF tokens.

use std::collections::HashMap;

use reqwest::{StatusCode, header};

use crate::helpers::TestApp;

/// One browser: keeps its cookies, follows no redirects.
pub struct Visitor<'a> {
    app: &'a TestApp,
    pub cookies: HashMap<String, String>,
}

/// A response as the tests look at it.
pub struct Page {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The `csrf_token` of the first form on the page.
    pub fn csrf_token(&self) -> String {
        field_value(&self.body, "csrf_token").unwrap_or_else(|| panic!("no csrf_token in:\n{}", self.body))
    }
}

pub fn field_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

impl<'a> Visitor<'a> {
    /// A visitor who has just signed up through the form with `email` and `password`
    /// (and is signed in).
    pub async fn signed_up(app: &'a TestApp, email: &str, password: &str) -> Self {
        let mut visitor = Self::new(app);
        let page = visitor
            .submit("/signup", "/signup", &[("email", email), ("password", password)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        visitor
    }

    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            cookies: HashMap::new(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = if self.cookies.is_empty() {
            request
        } else {
            request.header(header::COOKIE, self.cookie_header())
        };
        let response = request.send().await.expect("request sent");
        for set in response.headers().get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.app.client.get(self.app.url(path));
        self.send(request).await
    }

    /// Opens an emailed link as a browser does: the token leaves the URL at once (a 303 to the
    /// same path, the token in a cookie), then the page itself.
    pub async fn open_link(&mut self, link: &str) -> Page {
        let first = self.get(link).await;
        let path = link.split_once('?').map_or(link, |(path, _)| path);
        assert_eq!(first.status, StatusCode::SEE_OTHER, "{link}: {}", first.body);
        assert_eq!(first.location(), path, "{link}");
        self.get(path).await
    }

    /// Posts `fields` as a browser would, with the CSRF token of the form at `form_path`.
    pub async fn submit(&mut self, form_path: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let token = self.get(form_path).await.csrf_token();
        let mut fields: Vec<(&str, &str)> = fields.to_vec();
        fields.push(("csrf_token", &token));
        self.post(action, &fields).await
    }

    pub async fn post(&mut self, action: &str, fields: &[(&str, &str)]) -> Page {
        let request = self.app.client.post(self.app.url(action)).form(fields);
        self.send(request).await
    }

    pub fn session(&self) -> Option<&String> {
        self.cookies.get("keel_session")
    }
}
