//! A store in memory that implements the core of [`Storage`] and none of
//! the optional capabilities, as an object store would: tests run the
//! registry and its lifecycle on it to show that the core is enough. Not a
//! backend to serve from (nothing survives the process).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{page_of, ByteSource, ContentRead, ListPage, ObjectInfo, Storage, WriteMode};

struct Object {
    data: Bytes,
    modified: SystemTime,
}

#[derive(Default)]
pub struct MemoryStorage {
    objects: Mutex<BTreeMap<String, Object>>,
}

impl MemoryStorage {
    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every key, for tests to compare stores.
    pub fn keys(&self) -> Vec<String> {
        self.objects().keys().cloned().collect()
    }
}

fn object(data: Bytes) -> Object {
    Object {
        data,
        modified: SystemTime::now(),
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        Ok(self.objects().get(key).map(|o| o.data.clone()))
    }

    async fn put(&self, key: &str, data: Bytes, mode: WriteMode) -> io::Result<bool> {
        let mut objects = self.objects();
        if let Some(found) = objects.get_mut(key) {
            let keep = match mode {
                WriteMode::CreateIfAbsent | WriteMode::Record => true,
                WriteMode::Overwrite | WriteMode::Scratch => found.data == data,
            };
            if keep {
                found.modified = SystemTime::now();
                return Ok(false);
            }
        }
        objects.insert(key.to_owned(), object(data));
        Ok(true)
    }

    async fn size(&self, key: &str) -> io::Result<Option<u64>> {
        Ok(self.objects().get(key).map(|o| o.data.len() as u64))
    }

    async fn stat(&self, key: &str) -> io::Result<Option<ObjectInfo>> {
        Ok(self.objects().get(key).map(|o| ObjectInfo {
            size: o.data.len() as u64,
            modified: o.modified,
        }))
    }

    async fn touch(&self, key: &str) -> io::Result<bool> {
        Ok(self
            .objects()
            .get_mut(key)
            .map(|o| o.modified = SystemTime::now())
            .is_some())
    }

    async fn delete_if_untouched_since(&self, key: &str, cutoff: SystemTime) -> io::Result<bool> {
        let mut objects = self.objects();
        if objects.get(key).is_some_and(|o| o.modified < cutoff) {
            objects.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<bool> {
        let mut objects = self.objects();
        let Some(moved) = objects.remove(from) else {
            return Ok(false);
        };
        objects.insert(to.to_owned(), moved);
        Ok(true)
    }

    async fn read(&self, key: &str, range: Option<Range<u64>>) -> io::Result<Option<ContentRead>> {
        let Some(data) = self.get(key).await? else {
            return Ok(None);
        };
        let size = data.len() as u64;
        let range = range.unwrap_or(0..size);
        if range.end > size || range.start > range.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside object",
            ));
        }
        let part = data.slice(range.start as usize..range.end as usize);
        Ok(Some(ContentRead {
            size,
            stream: Box::pin(futures::stream::once(async move { Ok(part) })),
            verified: false,
        }))
    }

    async fn delete(&self, key: &str) -> io::Result<bool> {
        Ok(self.objects().remove(key).is_some())
    }

    async fn delete_all(&self, prefix: &str) -> io::Result<()> {
        let below = format!("{prefix}/");
        self.objects().retain(|key, _| !key.starts_with(&below));
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> io::Result<ListPage> {
        let below = format!("{prefix}/");
        let children: BTreeSet<String> = self
            .objects()
            .range(below.clone()..)
            .take_while(|(key, _)| key.starts_with(&below))
            .filter_map(|(key, _)| key[below.len()..].split('/').next().map(str::to_owned))
            .collect();
        Ok(page_of(children.into_iter().collect(), start_after, limit))
    }

    async fn append_upload(
        &self,
        key: &str,
        offset: u64,
        data: &mut ByteSource<'_>,
        _length: Option<u64>,
        _state: &mut String,
    ) -> io::Result<u64> {
        let mut content = BytesMut::from(self.get(key).await?.unwrap_or_default().as_ref());
        if (content.len() as u64) < offset {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "upload content is shorter than the offset",
            ));
        }
        content.truncate(offset as usize);
        let mut appended = 0;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            appended += chunk.len() as u64;
            content.extend_from_slice(&chunk);
        }
        self.objects()
            .insert(key.to_owned(), object(content.freeze()));
        Ok(appended)
    }

    async fn commit_upload(
        &self,
        key: &str,
        size: u64,
        dest: &str,
        _state: &str,
    ) -> io::Result<()> {
        let mut objects = self.objects();
        let Some(mut upload) = objects.remove(key) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        if (upload.data.len() as u64) < size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upload content is shorter than the blob",
            ));
        }
        upload.data.truncate(size as usize);
        objects.insert(dest.to_owned(), object(upload.data));
        Ok(())
    }

    async fn check_writable(&self) -> io::Result<()> {
        Ok(())
    }
}
