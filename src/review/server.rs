//! The review page's server: loopback only, every request carrying the
//! random token the URL was printed with, the page's files embedded in the
//! binary. Routes (all `GET` but the decision):
//!
//! - `/` the page; `/app.js`, `/style.css` its script and style;
//! - `/api/items` every item, the classes, the decisions so far;
//! - `/api/models?i=K` what each model said about item K;
//! - `/api/image?i=K` the image as stored; `/api/view?i=K&t=r1c1s256` one
//!   zoom view (PNG); `/api/top5?i=K&m=MODEL&t=...` the model's top-5 on
//!   that view, computed on the CPU on demand;
//! - `POST /api/decide` `{"i":K,"decision":"keep|drop|relabel|flag",
//!   "labels":[...],"comment":"..."}`: written to the review CSV before
//!   the answer.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use super::Workbench;
use crate::models::{Classifier, Runtime};
use crate::plan::Plan;
use crate::review_csv::{Decision, Review, ReviewFile};
use crate::zoom::{decode_rgb, normalise_chw, zoom_view, Transform};

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

/// A running review session.
pub(crate) struct Session<'a> {
    pub plan: &'a Plan,
    pub bench: Workbench,
    pub file: Mutex<ReviewFile>,
    pub reviewer: String,
    pub token: String,
    /// Models loaded for on-demand top-5s, by name.
    models: Mutex<HashMap<String, Classifier>>,
    /// Recently read images, by item.
    images: Mutex<Vec<(usize, Vec<u8>)>>,
}

/// 128 random bits from the system's generator, as hex.
pub(crate) fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(crate::util::hex(&bytes))
}

type Reply = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
        .unwrap_or_else(|_| tiny_http::Header::from_bytes(&b"X-Bad"[..], &b"1"[..]).unwrap());
    tiny_http::Response::from_data(body)
        .with_status_code(status)
        .with_header(header)
}

fn json(value: &serde_json::Value) -> Reply {
    reply(200, "application/json", value.to_string().into_bytes())
}

fn error(status: u16, message: &str) -> Reply {
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": message })
            .to_string()
            .into_bytes(),
    )
}

/// The query parameters of a URL.
fn query(url: &str) -> HashMap<String, String> {
    let Some((_, q)) = url.split_once('?') else {
        return HashMap::new();
    };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The MIME type of encoded image bytes.
fn image_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        "image/jpeg"
    } else if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.len() > 12 && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

impl<'a> Session<'a> {
    pub fn new(
        plan: &'a Plan,
        bench: Workbench,
        file: ReviewFile,
        reviewer: String,
        token: String,
    ) -> Session<'a> {
        Session {
            plan,
            bench,
            file: Mutex::new(file),
            reviewer,
            token,
            models: Mutex::new(HashMap::new()),
            images: Mutex::new(Vec::new()),
        }
    }

    /// Answer requests until the process ends.
    pub fn serve(&self, server: &tiny_http::Server) {
        for mut request in server.incoming_requests() {
            let response = self.route(&mut request);
            let _ = request.respond(response);
        }
    }

    fn route(&self, request: &mut tiny_http::Request) -> Reply {
        let url = request.url().to_string();
        let path = url.split('?').next().unwrap_or("").to_string();
        let q = query(&url);
        let header_token = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("X-Review-Token"))
            .map(|h| h.value.as_str().to_string());
        let token = q.get("token").cloned().or(header_token);
        // The page's own files carry nothing; everything else needs the token.
        match path.as_str() {
            "/app.js" => return reply(200, "text/javascript", SCRIPT.as_bytes().to_vec()),
            "/style.css" => return reply(200, "text/css", STYLE.as_bytes().to_vec()),
            _ => {}
        }
        if token.as_deref() != Some(self.token.as_str()) {
            return error(
                403,
                "this review session needs the token it was started with",
            );
        }
        let item = q.get("i").and_then(|i| i.parse::<usize>().ok());
        match (request.method(), path.as_str()) {
            (tiny_http::Method::Get, "/") => {
                reply(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec())
            }
            (tiny_http::Method::Get, "/api/items") => self.items(),
            (tiny_http::Method::Get, "/api/models") => match item {
                Some(k) if k < self.bench.items.len() => json(&serde_json::json!({
                    "transforms": self.bench.transforms,
                    "models": self.bench.views(k),
                })),
                _ => error(404, "no such item"),
            },
            (tiny_http::Method::Get, "/api/image") => match item.map(|k| self.image(k)) {
                Some(Ok(bytes)) => reply(200, image_type(&bytes), bytes),
                Some(Err(e)) => error(500, &e),
                None => error(404, "no such item"),
            },
            (tiny_http::Method::Get, "/api/view") => {
                match (item, q.get("t").and_then(|t| t.parse::<Transform>().ok())) {
                    (Some(k), Some(t)) => match self.in_grid(t) {
                        Err(e) => error(400, &e),
                        Ok(t) => match self.view(k, t) {
                            Ok(png) => reply(200, "image/png", png),
                            Err(e) => error(500, &e),
                        },
                    },
                    _ => error(400, "give i=ITEM and t=rRcCsS"),
                }
            }
            (tiny_http::Method::Get, "/api/top5") => {
                let t = q.get("t").and_then(|t| t.parse::<Transform>().ok());
                match (item, q.get("m"), t) {
                    (Some(k), Some(m), Some(t)) => match self.in_grid(t) {
                        Err(e) => error(400, &e),
                        Ok(t) => match self.top5(k, m, t) {
                            Ok(v) => json(&v),
                            Err(e) => error(500, &e),
                        },
                    },
                    _ => error(400, "give i=ITEM, m=MODEL and t=rRcCsS"),
                }
            }
            (tiny_http::Method::Post, "/api/decide") => {
                let mut body = String::new();
                if request.as_reader().read_to_string(&mut body).is_err() {
                    return error(400, "unreadable body");
                }
                match self.decide(&body) {
                    Ok(n) => json(&serde_json::json!({ "ok": true, "reviewed": n })),
                    Err(e) => error(400, &e),
                }
            }
            _ => error(404, "no such route"),
        }
    }

    fn items(&self) -> Reply {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let decisions: Vec<Option<&Review>> = self
            .bench
            .items
            .iter()
            .map(|it| file.get(&it.origin, it.row))
            .collect();
        let classes: Vec<&str> = crate::labels::classes()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        json(&serde_json::json!({
            "items": self.bench.items,
            "suspect_order": self.bench.suspect_order,
            "decisions": decisions,
            "models": self.bench.models,
            "classes": classes,
            "file": file.path().display().to_string(),
            "reviewer": self.reviewer,
        }))
    }

    /// The encoded bytes of item `k`, as its source stores them.
    fn image(&self, k: usize) -> Result<Vec<u8>, String> {
        if let Some((_, b)) = self
            .images
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(i, _)| *i == k)
        {
            return Ok(b.clone());
        }
        let it = self.bench.items.get(k).ok_or("no such item")?;
        let source = self
            .plan
            .sources
            .iter()
            .find(|s| s.origin == it.origin)
            .ok_or("the item's source is not in the plan")?;
        for outcome in source.reader().rows_in([it.row].into_iter().collect()) {
            if let Ok(Ok(rec)) = outcome {
                if rec.row == it.row {
                    let mut cache = self.images.lock().unwrap_or_else(|p| p.into_inner());
                    cache.push((k, rec.image.clone()));
                    if cache.len() > 32 {
                        cache.remove(0);
                    }
                    return Ok(rec.image);
                }
            }
        }
        Err(format!(
            "{} row {} is no longer readable",
            it.origin, it.row
        ))
    }

    /// `t` if it is one of this run's views, else what the grid holds.
    fn in_grid(&self, t: Transform) -> Result<Transform, String> {
        let g = &self.plan.grid;
        if t.row < g.anchors && t.col < g.anchors && g.scales.contains(&t.scale) {
            return Ok(t);
        }
        let scales: Vec<String> = g.scales.iter().map(|s| s.to_string()).collect();
        Err(format!(
            "t={t} is not a view of this run: rows and columns 0..{}, scales {}",
            g.anchors.saturating_sub(1),
            scales.join(", ")
        ))
    }

    fn view_pixels(&self, k: usize, t: Transform) -> Result<crate::zoom::RgbImage, String> {
        let bytes = self.image(k)?;
        let img = decode_rgb(&bytes, self.plan.decode).map_err(|e| e.to_string())?;
        let g = &self.plan.grid;
        Ok(zoom_view(&img, t, g.anchors, g.crop_size, g.fill))
    }

    fn view(&self, k: usize, t: Transform) -> Result<Vec<u8>, String> {
        let v = self.view_pixels(k, t)?;
        let img = image::RgbImage::from_raw(v.width, v.height, v.data).ok_or("bad view")?;
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        Ok(out.into_inner())
    }

    /// The top-5 of `model` on item `k` under `t`, and where its labels rank.
    fn top5(&self, k: usize, model: &str, t: Transform) -> Result<serde_json::Value, String> {
        let pm = self
            .plan
            .models
            .iter()
            .find(|m| m.name == model)
            .ok_or_else(|| format!("no model `{model}` in this run"))?;
        let view = self.view_pixels(k, t)?;
        let mut input = vec![0f32; 3 * view.width as usize * view.height as usize];
        normalise_chw(&view, pm.mean, pm.std, &mut input);
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if !models.contains_key(model) {
            let rt = Runtime::new(crate::models::DeviceChoice::Cpu).map_err(|e| e.to_string())?;
            let c = Classifier::load(pm.architecture, &pm.weights, &pm.extras(), &rt)
                .map_err(|e| e.to_string())?;
            models.insert(model.to_string(), c);
        }
        let classifier = models.get(model).ok_or("model not loaded")?;
        let logits = classifier
            .logits(&input, 1, view.width as usize)
            .map_err(|e| e.to_string())?;
        let p = crate::labels::softmax(&logits);
        let order = crate::labels::top_k(&logits, logits.len());
        let classes = crate::labels::classes();
        let top: Vec<serde_json::Value> = order
            .iter()
            .take(5)
            .map(|&i| serde_json::json!({"index": i, "name": classes[i].name, "probability": p[i]}))
            .collect();
        let it = &self.bench.items[k];
        let labels: Vec<serde_json::Value> = it
            .labels
            .iter()
            .map(|c| {
                let rank = order
                    .iter()
                    .position(|&i| i as i64 == c.index)
                    .map(|r| r + 1);
                serde_json::json!({"index": c.index, "name": c.name, "rank": rank,
                                   "probability": p.get(c.index as usize)})
            })
            .collect();
        Ok(
            serde_json::json!({"model": model, "transform": t.to_string(), "top": top, "labels": labels}),
        )
    }

    /// Record a decision; returns how many images are reviewed.
    fn decide(&self, body: &str) -> Result<usize, String> {
        #[derive(serde::Deserialize)]
        struct Body {
            i: usize,
            decision: Decision,
            #[serde(default)]
            labels: Vec<i64>,
            #[serde(default)]
            comment: String,
        }
        let b: Body = serde_json::from_str(body).map_err(|e| format!("bad decision: {e}"))?;
        let it = self.bench.items.get(b.i).ok_or("no such item")?;
        let labels = match b.decision {
            Decision::Drop => Vec::new(),
            Decision::Relabel => {
                if b.labels.is_empty()
                    || b.labels
                        .iter()
                        .any(|&l| !(0..crate::labels::NUM_CLASSES as i64).contains(&l))
                {
                    return Err("relabel needs ImageNet-1k indices 0..999".into());
                }
                let mut l = b.labels.clone();
                l.sort_unstable();
                l.dedup();
                l
            }
            Decision::Keep | Decision::Flag => it.labels.iter().map(|c| c.index).collect(),
        };
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.set(Review {
            origin: it.origin.clone(),
            row: it.row,
            labels,
            decision: b.decision,
            comment: b.comment,
            reviewer: self.reviewer.clone(),
        })
        .map_err(|e| e.to_string())?;
        Ok(file.all().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_and_images_are_typed() {
        let q = query("/api/view?i=3&t=r1c1s256&token=ab%2Fcd+e");
        assert_eq!(q["i"], "3");
        assert_eq!(q["t"], "r1c1s256");
        assert_eq!(q["token"], "ab/cd e");
        assert!(query("/").is_empty());
        assert_eq!(image_type(&[0xFF, 0xD8, 0xFF]), "image/jpeg");
        assert_eq!(image_type(b"\x89PNG\r\n"), "image/png");
        let t = random_token().unwrap();
        assert_eq!(t.len(), 32);
        assert_ne!(t, random_token().unwrap());
    }
}
