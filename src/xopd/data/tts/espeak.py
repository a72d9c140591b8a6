"""espeak-ng as a :class:`~xopd.data.tts.base.TTSEngine`: a ctypes binding in a fork server (default,
deterministic), in this process (fastest), or the ``espeak-ng`` program.

Text is never interpreted: it reaches espeak as one C string / one argv element after ``--``, with
SSML and phoneme input off, so ``$(...)``, backticks or ``--help`` are simply read aloud.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import inspect
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from xopd.data.audio import SAMPLE_RATE, to_mono_16k
from xopd.data.tts.base import TTSError, Voice

_INSTALL_HINT = "install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng`"
_MAX_CHARS = 4000  # one utterance (~5 minutes of speech); longer text should be split by the caller
_WINDOW = 3  # fork-server requests in flight


# --------------------------------------------------------------------------- ctypes binding
class _EspeakLib:
    """libespeak-ng through ctypes, stdlib only (its source is also the fork server's code).

    Synchronous mode: ``espeak_Synth`` calls our callback with int16 chunks and returns when the
    utterance is done. espeak is a global singleton in C, so callers serialise access.
    """

    def __init__(self) -> None:
        lib = None
        for cand in ("libespeak-ng.so.1", ctypes.util.find_library("espeak-ng")):
            try:
                lib = ctypes.CDLL(cand) if cand else None
            except OSError:
                continue
            if lib is not None:
                break
        if lib is None:
            raise OSError("libespeak-ng not found")
        cb_t = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [cb_t]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        # AUDIO_OUTPUT_SYNCHRONOUS=2; 1000 ms buffers = few callbacks per short prompt.
        self.sample_rate = lib.espeak_Initialize(2, 1000, None, 0)
        if self.sample_rate <= 0:
            raise OSError("espeak_Initialize failed (espeak-ng-data missing?)")
        data = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(data)) or b"?").decode()
        self.data_path = data.value.decode() if data.value else ""
        self.lib, self._out, self._voice = lib, [], None
        self._cb = cb_t(self._collect)  # keep a reference: C holds only the pointer
        lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, n, _events) -> int:
        if n > 0 and wav:
            self._out.append(ctypes.string_at(wav, 2 * n))
        return 0  # continue synthesis

    def set_voice(self, name: str) -> bool:
        if name != self._voice:
            if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
                self._voice = None
                return False
            self._voice = name
        return True

    def synth(self, text: str, name: str, rate: int, pitch: int) -> bytes | None:
        """Little-endian int16 PCM at ``sample_rate``; None if the voice does not exist."""
        if not self.set_voice(name):
            return None
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH
        self._out = []
        buf = text.encode("utf-8")  # flags: espeakCHARS_UTF8 only (no SSML, no [[phonemes]])
        err = self.lib.espeak_Synth(buf, len(buf) + 1, 0, 1, 0, 1, None, None)  # POS_CHARACTER
        self.lib.espeak_Synchronize()
        if err != 0:
            raise RuntimeError(f"espeak_Synth returned {err}")
        out, self._out = b"".join(self._out), []
        return out


# espeak keeps pitch-flutter, noise (libc rand) and echo state across utterances, so in one process
# the same text comes out a few samples different each time. The fork server initialises espeak
# once, never synthesises itself, and forks a child per utterance: every utterance starts from the
# same pristine state (and srand(1)), so identical input gives bit-identical audio in any order or
# process. Frames on the pipes: <u32 length><json> requests, <i32 status><u32 length><payload> replies.
_SERVER_MAIN = """
def _read(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            return None
        b += c
    return b


def _send(status, payload):
    mv = memoryview(struct.pack("<iI", status, len(payload)) + payload)
    while mv:
        mv = mv[os.write(1, mv):]


def _main():
    lib = _EspeakLib()
    lib.set_voice("en-us")  # load the English dictionary once; touches no synthesis state
    info = {"sr": lib.sample_rate, "version": lib.version, "data": lib.data_path}
    _send(0, json.dumps(info).encode())
    libc = ctypes.CDLL(None)
    gc.freeze()  # fewer copy-on-write pages in each child
    while True:
        head = _read(4)
        if head is None:
            return
        req = json.loads(_read(struct.unpack("<I", head)[0]))
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                libc.srand(1)
                pcm = lib.synth(req["t"], req["v"], req["r"], req["p"])
                _send(0 if pcm is not None else 1, pcm or b"")
                code = 0
            finally:
                os._exit(code)
        if os.waitpid(pid, 0)[1] != 0:
            _send(2, b"child failed")


_main()
"""


class _ForkServer:
    """Parent side of the fork server (one per process, started lazily)."""

    def __init__(self) -> None:
        src = "import ctypes\nimport ctypes.util\nimport gc\nimport json\nimport os\nimport struct\n\n"
        src += inspect.getsource(_EspeakLib) + _SERVER_MAIN
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", src], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, bufsize=0,
        )  # fmt: skip
        self.pid, self.lock, self.owner = os.getpid(), threading.Lock(), None
        if hasattr(fcntl, "F_SETPIPE_SZ"):  # a whole utterance fits: the child never waits on us
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        _, payload = self._reply()
        info = json.loads(payload)
        self.sample_rate, self.version, self.data_path = int(info["sr"]), info["version"], info["data"]

    def _reply(self) -> tuple[int, bytes]:
        def read(n: int) -> bytes:
            b = b""
            while len(b) < n:
                c = self.proc.stdout.read(n - len(b))
                if not c:
                    raise TTSError(f"espeak-ng fork server exited (code {self.proc.poll()})")
                b += c
            return b

        status, n = struct.unpack("<iI", read(8))
        return status, read(n)

    def synth_iter(self, reqs: Iterable[tuple[str, str, int, int]]) -> Iterator[tuple[tuple, bytes | None]]:
        """``(request, pcm)`` in request order, with up to ``_WINDOW`` requests in flight so the
        server synthesises the next utterance while the caller post-processes this one.

        No deadlock: we only ever block reading replies, except when writing a request, and the
        requests in flight (<= _WINDOW x _MAX_CHARS x 4 bytes) always fit the 64 KiB stdin pipe.
        """
        if self.owner == threading.get_ident():
            raise RuntimeError("nested espeak synthesis in one thread: finish the running synth_iter first")
        with self.lock:
            self.owner, pending = threading.get_ident(), deque()
            try:
                for r in reqs:
                    msg = json.dumps(
                        {"t": r[0], "v": r[1], "r": r[2], "p": r[3]}, ensure_ascii=False
                    ).encode()
                    self.proc.stdin.write(struct.pack("<I", len(msg)) + msg)
                    pending.append(r)
                    if len(pending) >= _WINDOW:
                        yield self._check(pending.popleft())
                while pending:
                    yield self._check(pending.popleft())
            finally:
                for _ in range(len(pending)):  # abandoned midway: drain so the pipe stays in sync
                    self._reply()
                self.owner = None

    def _check(self, req: tuple) -> tuple[tuple, bytes | None]:
        status, payload = self._reply()
        if status == 2:
            raise TTSError(f"espeak-ng crashed synthesising {req[0][:40]!r} with voice {req[1]}")
        return req, (None if status == 1 else payload)


_LOCK = threading.Lock()
_LIB: _EspeakLib | None = None
_SERVER: _ForkServer | None = None
_LOAD_ERROR: str | None = None


def _get_lib() -> _EspeakLib | None:
    global _LIB, _LOAD_ERROR
    with _LOCK:
        if _LIB is None:
            try:
                _LIB = _EspeakLib()
            except OSError as e:
                _LOAD_ERROR = str(e)
        return _LIB


def _get_server() -> _ForkServer | None:
    """This process's fork server (a new one after our own fork: pipes are not shareable)."""
    global _SERVER, _LOAD_ERROR
    with _LOCK:
        if _SERVER is None or _SERVER.pid != os.getpid() or _SERVER.proc.poll() is not None:
            _SERVER = None
            if hasattr(os, "fork"):
                try:
                    _SERVER = _ForkServer()
                except (OSError, ValueError, TTSError) as e:
                    _LOAD_ERROR = str(e)
        return _SERVER


# ------------------------------------------------------------------------- subprocess backend
def _parse_wav_stream(raw: bytes) -> tuple[np.ndarray, int]:
    """Decode espeak-ng's ``--stdout`` WAV, whose size fields are bogus (it streams)."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise TTSError("espeak-ng --stdout did not return a WAV stream")
    pos, rate = 12, 22050
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        if cid == b"fmt ":
            rate = int.from_bytes(raw[pos + 12 : pos + 16], "little")
        elif cid == b"data":
            body = raw[pos + 8 :]
            return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").copy(), rate
        pos += 8 + size
    raise TTSError("espeak-ng --stdout WAV has no data chunk")


class EspeakEngine:
    """espeak-ng synthesis, resampled (soxr) from the native 22050 Hz to ``sample_rate``.

    ``backend``:

    * ``"fork"``: ctypes binding in a fork server, one pristine child per utterance;
      deterministic (same text+voice -> same samples), costlier than ``"ctypes"``;
    * ``"ctypes"``: the binding in this process under a lock; fastest, but espeak carries
      pitch-flutter/noise state between utterances, so output depends slightly on call order;
    * ``"subprocess"``: one ``espeak-ng`` process per utterance (argument list, no shell);
      deterministic, the slowest (docs/BENCHMARKS.md);
    * ``"auto"``: the first of fork, ctypes, subprocess that works.

    Raises :class:`TTSError` with an install hint when espeak-ng is missing.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, backend: str = "auto") -> None:
        if backend not in ("auto", "fork", "ctypes", "subprocess"):
            raise TTSError(f"TTS backend {backend!r} unknown; use auto, fork, ctypes or subprocess")
        self.sample_rate = int(sample_rate)
        self._exe = shutil.which("espeak-ng")
        self._server = _get_server() if backend in ("auto", "fork") else None
        use_lib = backend == "ctypes" or (backend == "auto" and self._server is None)
        self._lib = _get_lib() if use_lib else None
        if self._server is not None:
            self.backend, src = "fork", self._server
        elif self._lib is not None:
            self.backend, src = "ctypes", self._lib
        elif backend in ("fork", "ctypes"):
            raise TTSError(f"cannot use libespeak-ng via {backend} ({_LOAD_ERROR}); {_INSTALL_HINT}")
        elif self._exe is not None:
            self.backend, src = "subprocess", None
        else:
            raise TTSError(
                f"espeak-ng is not installed (no libespeak-ng.so.1, no espeak-ng program); {_INSTALL_HINT}"
            )
        if src is not None:
            self.native_rate, self.version = src.sample_rate, src.version
            self.data_path = Path(src.data_path) if src.data_path else None
        else:
            self.native_rate, (self.version, self.data_path) = 22050, self._program_info()
        self.deterministic = self.backend != "ctypes"
        self.name = f"espeak-ng-{self.version}"

    def _program_info(self) -> tuple[str, Path | None]:
        out = subprocess.run([self._exe, "--version"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"speech:\s*(\S+).*?Data at:\s*(\S+)", out, re.S)
        return (m.group(1), Path(m.group(2))) if m else ("?", None)

    def has_variant(self, variant: str) -> bool:
        """True if ``voices/!v/<variant>`` exists (espeak silently ignores unknown variants)."""
        return self.data_path is None or (self.data_path / "voices" / "!v" / variant).is_file()

    def _prepare(self, text: str, voice: Voice) -> tuple[str, str, int, int]:
        voice.validate()
        if voice.variant is not None and not self.has_variant(voice.variant):
            raise TTSError(
                f"espeak-ng has no variant {voice.variant!r} (voice {voice.name}); see {self.data_path}/voices/!v"
            )
        text = text.replace("\x00", " ")  # C strings end at NUL; never let text be cut silently
        if not text.strip():
            raise TTSError(f"cannot synthesise empty text (voice {voice.name})")
        if len(text) > _MAX_CHARS:
            raise TTSError(
                f"text of {len(text)} characters is too long for one utterance (max {_MAX_CHARS}); split it"
            )
        return text, voice.name, int(voice.rate), int(voice.pitch)

    def synth_native_iter(self, utts: Iterable[tuple[str, Voice]]) -> Iterator[np.ndarray]:
        """``[n]`` int16 samples at ``native_rate`` (22050 Hz) per ``(text, voice)``, in order.

        With the fork server, requests are pipelined: synthesis overlaps the caller's work.
        """
        reqs = (self._prepare(t, v) for t, v in utts)
        if self.backend == "subprocess":
            pairs: Iterable = ((r, self._synth_subprocess(*r)) for r in reqs)
        elif self._server is not None:
            if self._server.pid != os.getpid():  # we were forked: pipes belong to the parent
                self._server = _get_server() or self._server
            pairs = self._server.synth_iter(reqs)
        else:
            pairs = ((r, self._synth_locked(*r)) for r in reqs)
        for req, pcm in pairs:
            if pcm is None:
                raise TTSError(f"espeak-ng has no voice {req[1]!r}; list them with `espeak-ng --voices=en`")
            samples = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes) else pcm
            if samples.size == 0:
                raise TTSError(f"espeak-ng produced no audio for {req[0][:40]!r} (voice {req[1]})")
            yield samples

    def _synth_locked(self, text: str, name: str, rate: int, pitch: int) -> bytes | None:
        with _LOCK:
            return self._lib.synth(text, name, rate, pitch)

    def _synth_subprocess(self, text: str, name: str, rate: int, pitch: int) -> np.ndarray:
        cmd = [self._exe, "-v", name, "-s", str(rate), "-p", str(pitch), "--stdout", "--", text]
        proc = subprocess.run(cmd, capture_output=True, check=False, timeout=120)
        if proc.returncode != 0:
            msg = proc.stderr.decode(errors="replace").strip().splitlines()
            raise TTSError(f"espeak-ng failed for voice {name}: {msg[-1] if msg else proc.returncode}")
        samples, self.native_rate = _parse_wav_stream(proc.stdout)
        return samples

    def synth_native(self, text: str, voice: Voice) -> np.ndarray:
        """``[n]`` int16 samples at ``native_rate`` (22050 Hz for espeak-ng)."""
        return list(self.synth_native_iter([(text, voice)]))[0]

    def synth_iter(
        self, utts: Iterable[tuple[str, Voice]], sample_rate: int | None = None
    ) -> Iterator[np.ndarray]:
        """``[n]`` float32 in [-1, 1] at ``sample_rate`` (default ``self.sample_rate``), in order."""
        rate = sample_rate or self.sample_rate
        for pcm in self.synth_native_iter(utts):
            yield to_mono_16k(pcm.astype(np.float32) / 32768.0, self.native_rate, rate, name="tts")

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """``[n]`` float32 in [-1, 1] at ``self.sample_rate``."""
        return list(self.synth_iter([(text, voice)]))[0]
