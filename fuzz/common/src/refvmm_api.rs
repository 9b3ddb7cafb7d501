//! Target `refvmm_api`: refvmm's control-API request parser.

use refvmm::api::{parse_request, Request, MAX_REQUEST};

/// Parses `data` (lossily decoded as UTF-8) as a request line; a parsed request must render
/// back to a line that parses to the same request.
///
/// # Panics
///
/// If the parser panics, or a parsed request does not survive rendering and parsing again.
pub fn run_refvmm_api(data: &[u8]) {
    let bytes = data.get(..MAX_REQUEST).unwrap_or(data);
    let line = String::from_utf8_lossy(bytes);
    let Ok(request) = parse_request(&line) else {
        return;
    };
    let rendered = render(&request);
    assert_eq!(
        parse_request(&rendered).ok(),
        Some(request),
        "{line:?} parsed, but its rendering {rendered:?} parses differently"
    );
}

/// The canonical request line for `request`.
pub fn render(request: &Request) -> String {
    match request {
        Request::Status => "status".to_string(),
        Request::Pause => "pause".to_string(),
        Request::Resume => "resume".to_string(),
        Request::Quit => "quit".to_string(),
        Request::Snapshot { dir } => format!("snapshot {}", dir.display()),
        Request::SdeiSignal { event, vcpu: None } => format!("sdei-signal {event:#x}"),
        Request::SdeiSignal {
            event,
            vcpu: Some(v),
        } => format!("sdei-signal {event} {v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_requests_parse_back() {
        let requests = [
            Request::Status,
            Request::Pause,
            Request::Resume,
            Request::Quit,
            Request::Snapshot {
                dir: "/var/lib/refvmm/snap-1".into(),
            },
            Request::SdeiSignal {
                event: 0x0100_0000,
                vcpu: None,
            },
            Request::SdeiSignal {
                event: 0,
                vcpu: Some(3),
            },
        ];

        for request in requests {
            assert_eq!(parse_request(&render(&request)).ok(), Some(request.clone()));
        }
    }
}
