"""Build two real colour image-classification sets from pictures that packages ship.

Fashion-MNIST is grey, square and uniform; these sets are colour artwork made by
others, with alpha, imbalanced classes and (for clip-art) mixed sizes, to test the
classifier on inputs closer to what users bring. Nothing is generated here: PNGs are
copied byte for byte from the packages below, sorted into class folders; grey
pictures (much of openclipart is black-and-white line art, a few emoji are grey)
and byte-identical copies are left out, so every picture is colour and unique.

  clipart  Debian's openclipart-png: public-domain clip-art that upstream sorted into
           category folders (animals, food, people, ...). Class = top-level folder.
  emoji    npm's emoji-datasource-google: Google's Noto emoji as 64x64 PNGs, with the
           Unicode category of each emoji in emoji.json. Class = category.

Layout: ROOT/<set>/{train,test}/<class>/*.png and ROOT/<set>/README.txt (sources,
licence, filters, per-class counts). Split is 75/25 per class with a fixed seed, by
group, so near-duplicates (man/woman/person variants of an emoji, numbered variants
of one clip-art drawing) never sit on both sides. A set is built in <set>.part and
renamed when done, so an existing ROOT/<set> is complete and is skipped.

Usage: .venv/bin/python benchmarks/colour_sets.py [--root DIR]
Needs Pillow and numpy; installs openclipart-png with apt-get and fetches the npm
tarball with `npm pack` (this machine reaches the Debian and npm registries).
"""
import argparse, glob, hashlib, io, json, os, random, re, shutil, subprocess, sys, tarfile, tempfile
from collections import Counter, defaultdict

try:
    import numpy as np
    from PIL import Image
except ImportError:
    sys.exit("colour_sets.py needs Pillow and numpy: run it with .venv/bin/python after `make install`")

Image.MAX_IMAGE_PIXELS = None  # trusted package files; a few clip-arts are huge and filtered out by size
SEED, TEST_SHARE, CAP = 0, 0.25, 400
CLIPART_PKG, CLIPART_DIR = "openclipart-png", "/usr/share/openclipart/png"
# Categories with >= 60 coloured pictures in range; the rest (plants, tools, ...) are too small.
CLIPART_CLASSES = ["animals", "food", "people", "transportation", "recreation", "signs_and_symbols", "computer"]
EMOJI_PKG = "emoji-datasource-google@16.0.0"  # pinned so the set is the same on every machine
SIDE_MIN, SIDE_MAX = 48, 700


def sh(*cmd, **kw):
    """Run a command, fail loudly, return its stdout."""
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout.strip()


def apt_install(pkg):
    """Install a Debian package; update the lists once if the first try fails."""
    try:
        sh("apt-get", "install", "-y", "-q", pkg)
    except subprocess.CalledProcessError:
        sh("apt-get", "update", "-q")
        sh("apt-get", "install", "-y", "-q", pkg)


def is_colourful(im):
    """True unless the drawing is black-and-white/grey line art (common in openclipart):
    at least 5% of the visible pixels must have a channel spread above 48."""
    a = np.asarray(im.convert("RGBA"), dtype=np.int16)
    rgb = a[..., :3][a[..., 3] > 127]
    return len(rgb) > 0 and float(((rgb.max(1) - rgb.min(1)) > 48).mean()) > 0.05


def safe(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def clipart_items():
    """(class, group, out_name, png_bytes) for each clip-art PNG in size range, plus source notes."""
    if not os.path.isdir(CLIPART_DIR):
        apt_install(CLIPART_PKG)
    version = sh("dpkg-query", "-W", "-f", "${Version}", CLIPART_PKG)
    items = []
    for cls in CLIPART_CLASSES:
        for path in sorted(glob.glob(f"{CLIPART_DIR}/{cls}/**/*.png", recursive=True)):
            with Image.open(path) as im:  # reads the header only
                if not SIDE_MIN <= min(im.size) <= max(im.size) <= SIDE_MAX:
                    continue
            rel = os.path.relpath(path, f"{CLIPART_DIR}/{cls}")
            stem = re.sub(r"[_-]?\d*$", "", os.path.basename(path)[:-4])  # foo_01, foo_02 -> foo
            items.append((cls, stem, safe(rel.replace("/", "__")), open(path, "rb").read()))
    notes = (f"Debian package {CLIPART_PKG} {version}: {CLIPART_DIR}/<class>/[<sub>/]*.png\n"
             "Licence: public domain (Creative Commons Public Domain Dedication, see "
             f"/usr/share/doc/{CLIPART_PKG}/copyright); authors in the openclipart project.\n"
             f"Kept: PNGs with both sides in {SIDE_MIN}-{SIDE_MAX} px.\n"
             "Group for the split: file name less a trailing number (numbered variants stay together).")
    return items, notes


def emoji_group(unified):
    """Same group for man/woman/person and facing-left/right variants of one emoji."""
    drop = {"200D", "FE0F", "2640", "2642", "27A1"}
    alias = {"1F468": "P", "1F469": "P", "1F9D1": "P", "1F466": "C", "1F467": "C", "1F9D2": "C"}
    first, *rest = unified.split("-")  # the first codepoint stays: U+2640 alone is the female sign
    return "-".join(alias.get(c, c) for c in [first] + [c for c in rest if c not in drop])


def emoji_items():
    """Emoji from the npm tarball, read in place (no install needed beyond `npm pack`)."""
    items = []
    with tempfile.TemporaryDirectory() as tmp:
        sh("npm", "pack", "--silent", EMOJI_PKG, cwd=tmp)
        with tarfile.open(glob.glob(f"{tmp}/*.tgz")[0]) as tar:
            read = lambda name: tar.extractfile(f"package/{name}").read()
            meta = json.loads(read("package.json"))
            for e in json.loads(read("emoji.json")):
                if e["category"] == "Component" or not e.get("has_img_google"):
                    continue  # 'Component' = skin-tone swatches and hair parts, 5 pictures
                cls = safe(e["category"].replace(" & ", "_and_")).lower()
                name = safe(f"{e['short_name']}_{e['image']}")
                items.append((cls, emoji_group(e["unified"]), name, read(f"img/google/64/{e['image']}")))
    notes = (f"npm package {meta['name']} {meta['version']} (data licence {meta['license']}; the Google/Noto "
             "images are Apache License 2.0 per the package README): package/img/google/64/<codepoints>.png, "
             "class = 'category' in package/emoji.json (category 'Component' dropped; skin-tone variants "
             "are not included, only the default yellow).\n"
             "Group for the split: codepoints less gender/direction modifiers (man/woman/person variants together).")
    return items, notes


def thumb(data):
    """16x16 RGB thumbnail on white, to spot the same drawing saved twice (resized, retouched)."""
    im = Image.open(io.BytesIO(data)).convert("RGBA")
    bg = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
    return np.asarray(bg.convert("RGB").resize((16, 16), Image.BOX), dtype=np.int16).ravel()


def group_items(items):
    """Drop grey and byte-identical pictures (the French flag also stands for Saint Martin);
    join named groups with near-identical thumbnails (mean difference under 2/255) into one,
    and drop a near-duplicate filed under a second class. Returns {class: [[(out, data)]]}."""
    kept, seen = [], set()
    for it in items:
        digest = hashlib.md5(it[3]).hexdigest()
        if digest not in seen and is_colourful(Image.open(io.BytesIO(it[3]))):
            seen.add(digest)
            kept.append(it)
    parent = list(range(len(kept)))
    def find(i):
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i
    first = {}  # items of one named group share a root
    for i, (cls, group, _, _) in enumerate(kept):
        parent[find(i)] = find(first.setdefault((cls, group), i))
    thumbs = np.stack([thumb(it[3]) for it in kept])
    for i in range(len(kept)):
        for j in np.flatnonzero(np.abs(thumbs[i + 1:] - thumbs[i]).mean(1) < 2) + i + 1:
            parent[find(j)] = find(i)
    comps = defaultdict(list)
    for i, (cls, _, out, data) in enumerate(kept):
        comps[find(i)].append((cls, out, data))
    by_class = defaultdict(list)
    for comp in comps.values():  # a component's class is that of its first item
        by_class[comp[0][0]].append([(out, data) for cls, out, data in comp if cls == comp[0][0]])
    return by_class


def write_set(root, name, items, notes):
    """Cap each class at CAP pictures and split its groups 75/25, both with a fixed seed."""
    rng = random.Random(SEED)
    by_class = group_items(items)
    part = os.path.join(root, name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    counts = {}
    for cls in sorted(by_class):
        groups = sorted(by_class[cls])  # a fixed order before the seeded shuffle
        rng.shuffle(groups)
        kept = []
        for g in groups:  # whole groups, while they fit under the cap
            if sum(map(len, kept)) + len(g) <= CAP:
                kept.append(g)
        n = sum(map(len, kept))
        target, n_test = round(TEST_SHARE * n), 0
        for g in kept:  # a group goes to test while that brings the test count nearer its target
            split = "test" if abs(n_test + len(g) - target) < abs(n_test - target) else "train"
            n_test += len(g) if split == "test" else 0
            os.makedirs(os.path.join(part, split, cls), exist_ok=True)
            for out, data in g:
                with open(os.path.join(part, split, cls, out), "wb") as f:
                    f.write(data)
        counts[cls] = (n - n_test, n_test)
    table = "\n".join(f"  {c:20s} train {a:4d}  test {b:4d}" for c, (a, b) in counts.items())
    with open(os.path.join(part, "README.txt"), "w") as f:
        f.write(f"Set '{name}', made by benchmarks/colour_sets.py (seed {SEED}, test share {TEST_SHARE}).\n"
                f"Pictures are copied unchanged from:\n{notes}\n"
                "Dropped: grey pictures (under 5% of visible pixels with a channel spread over 48), "
                "byte-identical copies, near-copies filed under a second class; at most "
                f"{CAP} per class, whole groups sampled at random.\n"
                f"\nPer-class counts:\n{table}\n")
    os.rename(part, os.path.join(root, name))


def summary(root, name):
    """One line from the files on disk, so a skipped set reports the same as a new one."""
    n, sides, alpha, classes = Counter(), [], 0, set()
    for path in glob.glob(os.path.join(root, name, "*", "*", "*.png")):
        split, cls = path.split(os.sep)[-3:-1]
        n[split] += 1
        classes.add(cls)
        with Image.open(path) as im:
            sides += im.size
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                alpha += np.asarray(im.convert("RGBA"))[..., 3].min() < 255
    total = n["train"] + n["test"]
    return (f"{name}: {len(classes)} classes ({', '.join(sorted(classes))}), train {n['train']}, "
            f"test {n['test']}, sides {min(sides)}-{max(sides)} px, {alpha / total:.0%} with transparency")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/work/data/colour_sets")
    root = ap.parse_args().root
    os.makedirs(root, exist_ok=True)
    for name, make in [("clipart", clipart_items), ("emoji", emoji_items)]:
        if not os.path.isdir(os.path.join(root, name)):
            write_set(root, name, *make())
        print(summary(root, name))


if __name__ == "__main__":
    main()
