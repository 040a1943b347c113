# Berth's container image, FROM scratch: nothing to pull from a registry.
# Its build context is made by deploy/image/build.sh, which builds the release
# binary and gathers what it needs at run time (the libraries it links, CA
# certificates, an unprivileged user):
#   deploy/image/build.sh berth:latest
#   docker run -d -p 5000:5000 -v berth-data:/var/lib/berth --name berth berth:latest
FROM scratch
COPY rootfs/ /
# The data directory, owned by the unprivileged user the server runs as.
COPY --chown=10001:10001 data/ /var/lib/berth/
USER 10001:10001
ENV BERTH_LISTEN=0.0.0.0:5000 BERTH_DATA_DIR=/var/lib/berth
VOLUME /var/lib/berth
EXPOSE 5000
# SIGTERM: idle connections close at once, requests in flight get
# [server] shutdown_grace (25 s), below docker's and Kubernetes' kill timeouts.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
