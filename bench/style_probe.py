"""Probe for issue 4 (style transfer): does optimisation-based style transfer work on MobileNetV2 features, and
does smoothing the activations (Wang et al., CVPR 2021) help? Not part of the setup or the tests.

  .venv/bin/python bench/style_probe.py CONTENT STYLE
  (starry_night.jpg: `apt-get download opencv-doc`, then dpkg-deb -x; it is in usr/share/doc/opencv-doc/examples/data/)

Optimises the pixels (Adam, 150 steps, 256 px, starting from the content photo) against a content loss on
features[7] and a Gram style loss on features[2, 4, 7, 11], with no smoothing, a softmax over each map's
positions, or a softmax over channels; reports the style distance under plain Grams (relative to the unstyled
photo's), the correlation of 32x32 luminance with the photo, and the time per step. Writes /tmp/style_*.png.

First run (2026-11-27, 2 threads, chelsea.png + starry_night.jpg): unstyled distance 3.74; plain Gram sw=10/100:
0.01 of unstyled, luminance corr 0.97, 68-86 ms/step, visibly Van Gogh colours and strokes with some
high-frequency noise (a total-variation term is the next thing to try); softmax over channels: 0.20/0.12, corr
0.98, similar look; softmax over positions: 0.75/2.21, noisy orange texture (does not work).
"""
import sys, time, torch, torch.nn.functional as F, torchvision
from PIL import Image
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "models" / "export"))
from mobilenet_v2 import build_model
torch.set_num_threads(2); torch.manual_seed(0)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1,3,1,1); STD = torch.tensor([0.229, 0.224, 0.225]).view(1,3,1,1)
feats = build_model().features.eval()
for p in feats.parameters(): p.requires_grad_(False)
STYLE_LAYERS = [2, 4, 7, 11]; CONTENT_LAYER = 7
def load(path, size):
    img = Image.open(path).convert("RGB"); w, h = img.size; s = size / max(w, h)
    img = img.resize((max(1,int(w*s)), max(1,int(h*s))), Image.BICUBIC)
    return torchvision.transforms.functional.to_tensor(img).unsqueeze(0)
def maps(x):
    out = {}; y = (x - MEAN) / STD
    for i, layer in enumerate(feats):
        y = layer(y); 
        if i in STYLE_LAYERS or i == CONTENT_LAYER: out[i] = y
        if i >= max(STYLE_LAYERS + [CONTENT_LAYER]): break
    return out
def gram(f, smooth):
    b, c, h, w = f.shape; f = f.view(b, c, h*w)
    if smooth == "softmax_spatial": f = F.softmax(f, dim=-1) * (h*w) ** 0.5
    elif smooth == "softmax_channel": f = F.softmax(f, dim=1) * c ** 0.5
    return f @ f.transpose(1, 2) / (h * w)
def style_distance(x, s):  # the metric: raw Grams
    fx, fs = maps(x), maps(s)
    return sum(((gram(fx[l], None) - gram(fs[l], None)) ** 2).sum().item() / (gram(fs[l], None) ** 2).sum().item() for l in STYLE_LAYERS)
def lum_corr(a, b):
    la = F.adaptive_avg_pool2d(a.mean(1, keepdim=True), 32).flatten(); lb = F.adaptive_avg_pool2d(b.mean(1, keepdim=True), 32).flatten()
    la, lb = la - la.mean(), lb - lb.mean(); return (la @ lb / (la.norm() * lb.norm())).item()
def transfer(c, s, smooth, style_weight, steps=150, lr=0.03):
    x = c.clone().requires_grad_(True); opt = torch.optim.Adam([x], lr=lr)
    with torch.no_grad():
        fs = maps(s); fc = maps(c); gs = {l: gram(fs[l], smooth) for l in STYLE_LAYERS}
    t = time.time()
    for _ in range(steps):
        fx = maps(x)
        cl = F.mse_loss(fx[CONTENT_LAYER], fc[CONTENT_LAYER])
        sl = sum(((gram(fx[l], smooth) - gs[l]) ** 2).sum() / (gs[l] ** 2).sum() for l in STYLE_LAYERS)
        loss = cl + style_weight * sl
        opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad(): x.clamp_(0, 1)
    return x.detach(), (time.time() - t) / steps
content = load(sys.argv[1], 256)
style = load(sys.argv[2], 256)
base = style_distance(content, style)
print(f"unstyled: style distance {base:.3f}")
for smooth in [None, "softmax_spatial", "softmax_channel"]:
    for sw in [10, 100]:
        out, per_step = transfer(content, style, smooth, sw)
        d = style_distance(out, style)
        print(f"{str(smooth):16s} sw={sw:4d}: style distance {d:.3f} ({d/base:.2f} of unstyled), luminance corr {lum_corr(out, content):.2f}, {per_step*1000:.0f} ms/step", flush=True)
        torchvision.utils.save_image(out, f"/tmp/style_{smooth}_{sw}.png")
