# One multi-binary image: kubetune-operator, kubetune-webhook, kubetune-agent.
#   docker build -t kubetune:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY scripts/setup scripts/setup
COPY rust-toolchain.toml .
RUN KUBETUNE_SKIP_KUBECTL=1 bash scripts/setup
COPY . .
RUN cargo build --release --locked -p kubetune-operator -p kubetune-webhook -p kubetune-agent \
 && install -D -t /out target/release/kubetune-operator target/release/kubetune-webhook target/release/kubetune-agent

FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
