//! Which Redis image the harness runs, the Docker check, and the sweep of
//! containers and networks left by killed test runs.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use testcontainers::bollard::Docker;
use tokio::sync::OnceCell;

/// Label on every container the harness starts.
pub const HARNESS_LABEL: &str = "qs.harness";
/// Label holding the pid of the test process that started the container.
pub const PID_LABEL: &str = "qs.pid";
/// Prefix of the harness's container and network names.
pub const NAME_PREFIX: &str = "qs-";
/// The image `scripts/build-redis-image.sh` builds from the host's redis-server.
pub const LOCAL_IMAGE: &str = "redis:7.0.15-local";
/// The image preferred when it is present locally.
pub const UPSTREAM_IMAGE: &str = "redis:7";

/// An image reference split into name and tag.
#[derive(Clone, Debug)]
pub struct ImageRef {
    /// Repository name (`redis`).
    pub name: String,
    /// Tag (`7`).
    pub tag: String,
}

impl ImageRef {
    fn parse(text: &str) -> ImageRef {
        match text.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => ImageRef {
                name: name.to_owned(),
                tag: tag.to_owned(),
            },
            _ => ImageRef {
                name: text.to_owned(),
                tag: "latest".to_owned(),
            },
        }
    }

    fn full(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

static IMAGE: OnceCell<ImageRef> = OnceCell::const_new();

/// The Docker client, or a panic with one line saying no engine answers.
pub async fn docker() -> Docker {
    let docker = match testcontainers::core::client::docker_client_instance().await {
        Ok(docker) => docker,
        Err(error) => no_docker(&error.to_string()),
    };
    if let Err(error) = docker.ping().await {
        no_docker(&error.to_string());
    }
    docker
}

fn no_docker(error: &str) -> ! {
    panic!(
        "no Docker engine answers ({error}): the Redis integration tests need a running Docker Engine"
    )
}

/// The image to run, chosen once per test process (and printed once):
/// `QS_REDIS_IMAGE` if set; else `redis:7` if present locally; else
/// `redis:7.0.15-local`, built from the host's redis-server if missing.
/// Also sweeps what killed runs left behind.
pub async fn redis_image() -> &'static ImageRef {
    IMAGE
        .get_or_init(|| async {
            let docker = docker().await;
            sweep_leftovers(&docker).await;
            let chosen = choose_image(&docker).await;
            eprintln!("redis test harness: using image {}", chosen.full());
            chosen
        })
        .await
}

async fn image_exists(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

async fn choose_image(docker: &Docker) -> ImageRef {
    if let Ok(text) = std::env::var("QS_REDIS_IMAGE") {
        let image = ImageRef::parse(text.trim());
        if !image_exists(docker, &image.full()).await {
            // testcontainers would try to pull it, which may hang offline.
            panic!(
                "QS_REDIS_IMAGE={} is not present locally: pull or build it first",
                image.full()
            );
        }
        return image;
    }
    if image_exists(docker, UPSTREAM_IMAGE).await {
        return ImageRef::parse(UPSTREAM_IMAGE);
    }
    if !image_exists(docker, LOCAL_IMAGE).await {
        build_local_image();
    }
    if !image_exists(docker, LOCAL_IMAGE).await {
        panic!("no Redis image: {UPSTREAM_IMAGE} is not present and {LOCAL_IMAGE} could not be built (docker pull redis:7, or install redis-server and run scripts/build-redis-image.sh)");
    }
    ImageRef::parse(LOCAL_IMAGE)
}

/// Runs `scripts/build-redis-image.sh` (the same steps, from the host's
/// redis-server) when redis-server exists on the host.
fn build_local_image() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-redis-image.sh");
    let has_redis = Command::new("sh")
        .args(["-c", "command -v redis-server"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if !has_redis {
        eprintln!("redis test harness: no redis-server on this host to build {LOCAL_IMAGE} from");
        return;
    }
    match Command::new("bash").arg(&script).arg(LOCAL_IMAGE).status() {
        Ok(status) if status.success() => {}
        other => eprintln!("redis test harness: {} failed: {other:?}", script.display()),
    }
}

fn pid_is_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// Removes harness containers and networks whose test process is gone (a
/// run killed before its destructors ran). Containers of live processes,
/// including parallel test binaries, are left alone.
async fn sweep_leftovers(docker: &Docker) {
    let filters = HashMap::from([("label", vec![HARNESS_LABEL])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let containers = docker
        .list_containers(Some(options))
        .await
        .unwrap_or_default();
    for container in containers {
        let labels = container.labels.unwrap_or_default();
        let owner_alive = labels.get(PID_LABEL).is_some_and(|pid| pid_is_alive(pid));
        if let (false, Some(id)) = (owner_alive, container.id) {
            let force = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(&id, Some(force)).await;
        }
    }
    let filters = HashMap::from([("name", vec![NAME_PREFIX])]);
    let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
    for network in docker
        .list_networks(Some(options))
        .await
        .unwrap_or_default()
    {
        let Some(name) = network.name else { continue };
        // Harness networks are named qs-net-<pid>-<n>.
        let pid = name
            .strip_prefix("qs-net-")
            .and_then(|rest| rest.split('-').next());
        if pid.is_some_and(|pid| !pid_is_alive(pid)) {
            let _ = docker.remove_network(&name).await;
        }
    }
}
