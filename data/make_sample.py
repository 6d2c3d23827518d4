"""Generate a small synthetic sample in the format of the Upstage "Korean DialogSum" competition.

The real competition files (train.csv / dev.csv / test.csv) are not redistributable, so this
script writes a stand-in with the same columns and conventions, letting the offline pipeline
(tokenizer training, Ray Tune trials, ROUGE evaluation) run end to end. Drop the real files into
data/ to replace these; nothing here is copied from the real data.

Format: train/dev have ``fname,dialogue,summary,topic``; test has ``fname,dialogue``. A dialogue is
4-10 turns ``#PersonN#: ...`` joined by newlines; PII appears as masks such as ``#PhoneNumber#``.

Each row is one of 18 scenario templates (one per topic) with random slots; the summary is a fixed
per-scenario template filled with the same slots and speaker tags, so a tiny seq2seq model can learn
it. Turns have 2-3 paraphrases; a fixed seed (13) makes the output byte-for-byte reproducible.

Usage: python data/make_sample.py [--out-dir DIR]
"""
import argparse
import random
import re
from pathlib import Path

import pandas as pd

DAY = ["내일", "모레", "이번 주 금요일", "다음 주 월요일", "토요일"]
TIME = ["오전 10시", "오전 11시 30분", "오후 2시", "오후 세 시", "오후 4시", "저녁 7시"]
SERVICE_OPEN = "안녕하세요, 무엇을 도와드릴까요?|네, 말씀하세요.|어서 오세요. 어떻게 도와드릴까요?"
FRIEND_OPEN = "무슨 일이야?|어, 왜?|응, 말해."

# Role "A" is the one who asks / initiates, "B" answers. Paraphrases are separated by "|".
# Particles are written as 을(를), 은(는), 이(가), 과(와), 으로(로) and resolved after filling.
SCENARIOS = [
    dict(topic="병원 예약", open=SERVICE_OPEN,
         slots=dict(dept=[dict(dept="치과", sym="이가 너무 아파요"), dict(dept="안과", sym="눈이 자꾸 가려워요"),
                          dict(dept="피부과", sym="얼굴에 뭐가 났어요"), dict(dept="내과", sym="배가 계속 아파요")],
                    day=DAY, time=TIME),
         turns=[("A", "{dept}에 예약하고 싶어요.|{dept} 진료 예약을 하려고 전화했어요.|{dept} 예약 좀 할 수 있을까요?"),
                ("B", "네, 어디가 불편하세요?|어떤 증상이 있으신지 말씀해 주세요."),
                ("A", "{sym}.|요즘 {sym}."),
                ("B", "언제 오시겠어요?|원하시는 날짜가 있으세요?"),
                ("A", "{day} {time}에 가능할까요?|{day} {time}이(가) 좋겠어요."),
                ("B", "네, 가능합니다. 연락처를 알려 주시겠어요?|네, 예약해 드릴게요. 전화번호가 어떻게 되세요?"),
                ("A", "제 번호는 #PhoneNumber#입니다.|#PhoneNumber# 입니다."),
                ("B", "{day} {time}에 뵙겠습니다.|예약되었습니다. {day} {time}까지 오세요.")],
         summary="{A은} {day} {time}에 {dept} 진료를 예약하고 연락처 #PhoneNumber#을(를) 남긴다."),
    dict(topic="쇼핑", open=SERVICE_OPEN,
         slots=dict(item=["셔츠", "바지", "운동화", "가방", "모자"], color=["흰색", "검은색", "파란색", "빨간색"],
                    price=["삼만 원", "오만 원", "2만 5천 원", "4만 원", "칠만 원"]),
         turns=[("A", "이 {item} {color}으로(로) 있나요?|{color} {item}을(를) 찾고 있어요.|혹시 {color} {item} 있어요?"),
                ("B", "네, 있습니다. 사이즈가 어떻게 되세요?|잠시만요, 확인해 볼게요. 사이즈는요?"),
                ("A", "중간 사이즈로 주세요. 너무 크면 안 돼요.|보통 사이즈요. 입어 봐도 돼요?"),
                ("B", "여기 있습니다. 입어 보시겠어요?|이걸로 한번 보세요."),
                ("A", "좋네요. 얼마예요?|마음에 들어요. 가격이 얼마죠?"),
                ("B", "{price}입니다.|{price}이에요.|지금 {price}에 드려요."),
                ("A", "그럼 이걸로 살게요.|네, 카드로 계산할게요."),
                ("B", "감사합니다. 영수증 여기 있습니다.|네, 봉투에 담아 드릴게요. 또 오세요.")],
         summary="{A은} {B}에게 {color} {item}이(가) 있는지 묻고 {price}에 산다."),
    dict(topic="여행", open=SERVICE_OPEN,
         slots=dict(dest=["제주도", "부산", "도쿄", "방콕", "파리"], seat=["창가 좌석", "통로 좌석"],
                    bags=["한 개", "두 개", "세 개"]),
         turns=[("A", "{dest}행 비행기 탑승 수속을 하려고요.|{dest}에 가는 비행기 체크인하려고 왔어요."),
                ("B", "여권을 보여 주시겠어요?|여권 번호를 말씀해 주세요."),
                ("A", "여권 번호는 #PassportNumber#입니다.|#PassportNumber# 입니다.|여기요, #PassportNumber#예요."),
                ("B", "좌석은 어디로 드릴까요?|원하시는 좌석이 있으세요?"),
                ("A", "{seat}으로(로) 주세요.|{seat}이(가) 좋아요."),
                ("B", "짐은 몇 개 부치세요?|부치실 가방이 있나요?"),
                ("A", "{bags}요. 조금 무거울 수도 있어요.|가방 {bags} 부칠게요."),
                ("B", "네, 즐거운 여행 되세요.|탑승권 여기 있습니다.")],
         summary="{A은} {dest}행 비행기 수속을 하며 여권 번호 #PassportNumber#을(를) 알려 주고 {seat}을(를) 받는다."),
    dict(topic="식당", open=SERVICE_OPEN,
         slots=dict(people=["두 명", "세 명", "네 명", "혼자"], menu=["김치찌개", "불고기", "비빔밥", "냉면", "된장찌개"],
                    drink=["콜라", "물", "주스", "사이다"]),
         turns=[("A", "{people}인데 자리 있어요?|{people} 앉을 자리 있나요?"),
                ("B", "네, 이쪽으로 오세요.|창가 자리로 안내해 드릴게요."),
                ("A", "메뉴판 좀 주세요. 처음 와 봐서요.|여기 뭐가 제일 맛있어요?"),
                ("B", "오늘은 {menu}이(가) 인기가 많아요.|저희 집은 {menu}이(가) 유명해요."),
                ("A", "그럼 {menu}으로(로) 할게요.|{menu} 주세요."),
                ("B", "음료는 어떻게 하시겠어요?|마실 것도 같이 드릴까요?"),
                ("A", "{drink} 하나 주세요.|{drink}으로(로) 주세요."),
                ("B", "네, 금방 준비해 드릴게요.|알겠습니다. 잠시만 기다려 주세요.")],
         summary="{A은} {people} 자리에 앉아 {menu}과(와) {drink}을(를) 주문한다."),
    dict(topic="은행", open=SERVICE_OPEN,
         slots=dict(product=["적금", "통장", "체크카드", "예금"], money=["십만 원", "오십만 원", "백만 원", "20만 원", "삼십만 원", "천만 원"]),
         turns=[("A", "{product}을(를) 새로 만들고 싶어요.|{product} 하나 만들려고 왔어요."),
                ("B", "신분증 있으세요?|신분증과 주민등록번호가 필요합니다."),
                ("A", "네, 주민등록번호는 #SSN#입니다.|여기 신분증이요. 번호는 #SSN# 이에요."),
                ("B", "처음에 얼마를 넣으시겠어요?|처음 입금하실 금액은요?"),
                ("A", "일단 {money} 넣을게요.|처음에는 {money}이요."),
                ("B", "네, {product} 개설이 끝났습니다.|다 됐습니다. 감사합니다.")],
         summary="{A은} 주민등록번호 #SSN#을(를) 알려 주고 {money}으로(로) {product}을(를) 만든다."),
    dict(topic="이사", open=FRIEND_OPEN,
         slots=dict(day=DAY, area=["강남", "수원", "부산", "대전", "인천", "홍대"]),
         turns=[("A", "나 {day} {area}으로(로) 이사 가.|{day}에 {area}으로(로) 이사하게 됐어."),
                ("B", "정말? 갑자기 왜 이사해?|와, 축하해. 새 집은 어때?"),
                ("A", "회사가 가까워서. 새 주소는 #Address#야.|새 집 주소는 #Address# 이야."),
                ("B", "좋네. 짐은 많아?|혼자 옮길 수 있겠어?"),
                ("A", "좀 많아. 도와줄 수 있어?|혹시 와서 도와줄래?"),
                ("B", "그래, {day}에 갈게.|물론이지. 일찍 갈게.")],
         summary="{A은} {day} {area}으로(로) 이사한다며 {B}에게 새 주소 #Address#을(를) 알려 주고 도움을 부탁한다."),
    dict(topic="면접", open="들어오세요.|안녕하세요, 앉으세요.",
         slots=dict(job=["마케팅", "영업", "디자인", "개발", "회계"], years=["2년", "3년", "5년", "1년"]),
         turns=[("A", "어느 직무에 지원하셨죠?|자기소개 부탁드립니다."),
                ("B", "{job} 직무에 지원했습니다.|저는 {job} 일을 하고 싶어서 지원했습니다."),
                ("A", "경력이 있으세요?|관련 경험이 얼마나 되나요?"),
                ("B", "{years} 동안 {job} 일을 했습니다.|네, {years} 정도 일했습니다."),
                ("A", "좋습니다. 결과는 이메일로 알려 드릴게요.|수고하셨습니다. 결과는 메일로 보내 드릴게요."),
                ("B", "제 이메일은 #Email#입니다.|#Email# 으로 보내 주세요.")],
         summary="{A은} {job} 직무에 지원한 {B}과(와) 면접을 보고 결과를 #Email#으로(로) 보내겠다고 한다."),
    dict(topic="날씨", open=FRIEND_OPEN,
         slots=dict(w=[dict(w="비가 많이 온대", ws="비 소식", dec="미루기로 한다", say="다음 주로 미루자"),
                       dict(w="눈이 온대", ws="눈 소식", dec="미루기로 한다", say="다음에 하자"),
                       dict(w="날씨가 맑대", ws="맑은 날씨 소식", dec="그대로 하기로 한다", say="그냥 예정대로 하자"),
                       dict(w="하루 종일 화창하대", ws="화창한 날씨 소식", dec="그대로 하기로 한다", say="계획대로 가자")],
                    day=DAY, plan=["등산", "소풍", "자전거 타기", "축구"]),
         turns=[("A", "일기 예보 봤어? {day} {w}.|{day} 날씨 들었어? {w}."),
                ("B", "정말? 우리 {day}에 {plan} 하기로 했잖아.|그럼 {plan}은(는) 어떻게 해?"),
                ("A", "그래서 말인데, {plan} 약속 어떻게 할까?|{plan} 계획을 다시 생각해 보자."),
                ("B", "글쎄, 네 생각은 어때?|나는 잘 모르겠어. 너한테 맡길게."),
                ("A", "날씨를 보니까 {say}.|그럼 {say}."),
                ("B", "좋아, 그렇게 하자.|알았어.")],
         summary="{A은} {day} {ws}을(를) 듣고 {B}과(와) {plan} 약속을 {dec}."),
    dict(topic="길 찾기", open="네, 무슨 일이세요?|네?",
         slots=dict(place=["지하철역", "우체국", "도서관", "시청", "버스 정류장"], dir=["오른쪽", "왼쪽", "앞쪽"],
                    min=["5분", "10분", "15분", "3분"]),
         turns=[("A", "실례합니다. 혹시 이 근처에 {place}이(가) 어디에 있어요?|저기요, 길 좀 물어볼게요. {place}에 어떻게 가요?"),
                ("B", "{place}이요? 일단 이 길로 쭉 가세요.|여기서 그렇게 멀지 않아요."),
                ("A", "걸어서 갈 수 있나요? 버스를 타야 하나요?|거기까지 걸어서 얼마나 걸려요?"),
                ("B", "네, {dir}으로(로) {min} 정도 걸으면 돼요.|{dir}으로(로) 가면 {min}이면 도착해요."),
                ("A", "정말 감사합니다. 덕분에 찾을 수 있겠어요.|고맙습니다. 좋은 하루 보내세요.")],
         summary="{B은} {A}에게 {place}까지 {dir}으로(로) {min} 정도 걸어가면 된다고 알려 준다."),
    dict(topic="숙제", open=FRIEND_OPEN,
         slots=dict(subject=["수학", "영어", "과학", "역사"], due=DAY, pages=["열 쪽", "스무 쪽", "세 장", "다섯 장"]),
         turns=[("A", "{subject} 숙제 했어?|너 {subject} 숙제 다 했어?"),
                ("B", "아직. {due}까지지?|아니, 언제까지야?"),
                ("A", "응, {due}까지 {pages} 써야 해.|{due}까지 내야 돼. {pages}이나 돼."),
                ("B", "너무 많다. 혼자 하기 힘들어.|어떡하지, 시간이 없어."),
                ("A", "도서관에서 같이 할래?|그럼 우리 같이 하자."),
                ("B", "좋아, 같이 하자. 몇 시에 만날까?|그래, 고마워. 이따 도서관에서 봐.")],
         summary="{A은} {B}에게 {due}까지 내야 하는 {subject} 숙제를 같이 하자고 제안한다."),
    dict(topic="택배", open=SERVICE_OPEN,
         slots=dict(item=["책", "옷", "노트북", "신발", "화장품"], day=DAY),
         turns=[("A", "제가 주문한 {item} 배송 때문에 전화했어요.|{item} 배송지를 바꾸고 싶어요."),
                ("B", "주문하신 분 전화번호를 알려 주세요.|연락처가 어떻게 되세요?"),
                ("A", "#PhoneNumber#입니다.|제 번호는 #PhoneNumber# 이에요."),
                ("B", "확인했습니다. 어디로 바꿔 드릴까요?|새 주소를 말씀해 주세요."),
                ("A", "#Address#으로(로) 보내 주세요.|새 주소는 #Address# 입니다."),
                ("B", "네, {day} 도착할 거예요.|변경됐습니다. {day}에 받으실 수 있어요.")],
         summary="{A은} {item} 배송지를 #Address#으로(로) 바꿔 달라고 하고 {B은} {day} 도착한다고 안내한다."),
    dict(topic="주차", open="안녕하세요, 주차하실 건가요?|네, 어서 오세요.",
         slots=dict(hours=["두 시간", "세 시간", "한 시간", "하루"], fee=["삼천 원", "오천 원", "만 원", "육천 원", "팔천 원"]),
         turns=[("A", "주차 요금 좀 계산하려고요.|여기 주차비가 얼마예요?"),
                ("B", "차량 번호가 어떻게 되세요?|차 번호 말씀해 주세요."),
                ("A", "#CarNumber#입니다.|제 차는 #CarNumber# 이에요."),
                ("B", "{hours} 주차하셨네요. {fee}입니다.|{hours} 계셨어요. 요금은 {fee}이에요."),
                ("A", "카드로 낼게요. 영수증도 주세요.|여기 있어요. 생각보다 비싸네요."),
                ("B", "감사합니다. 안녕히 가세요.|네, 계산됐습니다.")],
         summary="{A은} 차량 번호 #CarNumber#으로(로) {hours} 주차하고 요금 {fee}을(를) 낸다."),
    dict(topic="호텔 예약", open=SERVICE_OPEN,
         slots=dict(day=DAY, nights=["하룻밤", "이틀", "사흘"], room=["더블룸", "트윈룸", "싱글룸", "스위트룸"]),
         turns=[("A", "방을 예약하고 싶어요.|호텔 방 예약 되나요?"),
                ("B", "언제부터 며칠 묵으실 건가요?|날짜와 기간을 알려 주세요."),
                ("A", "{day}부터 {nights} 묵을 거예요.|{day}부터 {nights}이요."),
                ("B", "어떤 방을 원하세요?|방은 어떤 걸로 드릴까요?"),
                ("A", "{room}으로(로) 주세요.|{room}이(가) 좋겠어요."),
                ("B", "보증금 결제할 카드 번호를 알려 주세요.|카드 번호가 필요합니다."),
                ("A", "카드 번호는 #CardNumber#입니다.|#CardNumber# 입니다."),
                ("B", "예약이 완료되었습니다. {day}에 뵙겠습니다.|확인됐습니다. 좋은 여행 되세요.")],
         summary="{A은} {day}부터 {nights} {room}을(를) 예약하고 카드 #CardNumber#으로(로) 보증금을 낸다."),
    dict(topic="영화", open=FRIEND_OPEN,
         slots=dict(genre=["액션 영화", "공포 영화", "코미디 영화", "애니메이션"], day=DAY, time=TIME,
                    meet=["영화관 앞", "카페", "역 앞", "정문"]),
         turns=[("A", "우리 {day}에 영화 볼래?|{day}에 시간 있어? 영화 보자."),
                ("B", "좋아. 뭐 볼까?|그래, 무슨 영화?"),
                ("A", "요즘 {genre}이(가) 재밌대.|{genre} 어때?"),
                ("B", "좋아. 몇 시에 볼까?|그래, 시간은 언제가 좋아?"),
                ("A", "{time} 어때? {meet}에서 만나자.|{time}에 {meet}에서 보자."),
                ("B", "알았어, {meet}에서 봐.|좋아, 늦지 마.")],
         summary="{A은} {B}과(와) {day} {time}에 {genre}을(를) 보고 {meet}에서 만나기로 한다."),
    dict(topic="생일 파티", open=FRIEND_OPEN,
         slots=dict(day=DAY, place=["우리 집", "식당", "카페", "공원"], gift=["케이크", "꽃", "책", "음료수"]),
         turns=[("A", "{day}이(가) 내 생일이야. 파티에 올래?|{day}에 생일 파티 하는데 와 줄래?"),
                ("B", "당연하지! 어디서 해?|좋아, 장소는 어디야?"),
                ("A", "{place}에서 해. 친구들도 많이 와.|{place}에서 하기로 했어."),
                ("B", "좋다. 뭐 가져갈까?|내가 뭐 사 갈까?"),
                ("A", "그냥 와도 돼. 음식은 내가 준비할게.|아무것도 필요 없어. 너만 오면 돼."),
                ("B", "그래도 {gift}을(를) 가져갈게.|내가 {gift} 사 갈게.")],
         summary="{A은} {B}을(를) {day} {place}에서 하는 생일 파티에 초대하고 {B은} {gift}을(를) 가져가겠다고 한다."),
    dict(topic="헬스장", open=SERVICE_OPEN,
         slots=dict(months=["한 달", "세 달", "여섯 달", "일 년"], price=["오만 원", "십만 원", "이십만 원", "삼십만 원"],
                    when=["아침", "저녁", "점심"]),
         turns=[("A", "헬스장 등록하고 싶어요.|운동 좀 시작하려고 하는데요."),
                ("B", "몇 달 하실 건가요?|기간은 어떻게 하시겠어요?"),
                ("A", "{months}이요.|일단 {months} 할게요."),
                ("B", "회원 등록을 위해 생년월일을 알려 주세요.|생년월일이 어떻게 되세요?"),
                ("A", "#DateOfBirth#입니다.|제 생년월일은 #DateOfBirth# 이에요."),
                ("B", "{months}에 {price}입니다.|가격은 {price}이에요."),
                ("A", "주로 {when}에 올 거예요.|{when}에도 열어요?"),
                ("B", "네, {when}에도 괜찮습니다.|그 시간에도 열어요.")],
         summary="{A은} 헬스장에 {months} 등록하고 {price}을(를) 내며 주로 {when}에 운동할 예정이다."),
    dict(topic="분실물", open=SERVICE_OPEN,
         slots=dict(item=["지갑", "휴대폰", "가방", "우산", "열쇠"], place=["버스", "지하철", "카페", "택시", "식당"]),
         turns=[("A", "{place}에서 {item}을(를) 잃어버렸어요.|{item}을(를) {place}에 두고 내렸어요."),
                ("B", "언제쯤 잃어버리셨어요?|{item}을(를) 언제 잃어버리셨나요?"),
                ("A", "오늘 아침이에요. 검은색이고 꽤 오래된 거예요.|한 시간 전쯤이요. 두고 온 것 같아요."),
                ("B", "찾으면 연락드릴게요. 연락처를 남겨 주세요.|연락처를 알려 주시겠어요?"),
                ("A", "#PhoneNumber#으로(로) 연락 주세요.|제 번호는 #PhoneNumber#입니다."),
                ("B", "네, 찾으면 바로 알려 드릴게요.|알겠습니다.")],
         summary="{A은} {place}에서 {item}을(를) 잃어버렸다고 신고하고 연락처 #PhoneNumber#을(를) 남긴다."),
    dict(topic="회의", open="네, 팀장님.|네, 무슨 일이세요?",
         slots=dict(day=DAY, time=TIME, room=["3층 회의실", "대회의실", "작은 회의실"],
                    agenda=["신제품", "예산", "마케팅 계획", "고객 불만"]),
         turns=[("A", "{agenda} 회의를 해야 할 것 같아요.|{agenda} 문제로 회의를 잡읍시다."),
                ("B", "언제가 좋으세요?|시간은 언제로 할까요?"),
                ("A", "{day} {time} 어때요?|{day} {time}에 합시다."),
                ("B", "좋습니다. 장소는 어디로 할까요?|괜찮아요. 어디서 하죠?"),
                ("A", "{room}에서 해요.|{room}을(를) 예약해 주세요."),
                ("B", "팀원들에게 알리겠습니다.|네, 모두에게 메일 보낼게요.")],
         summary="{A은} {B}에게 {day} {time}에 {room}에서 {agenda} 회의를 하자고 알린다."),
]
PERSON3 = ["저도 같이 들었어요.", "저도 그게 좋다고 생각해요.", "잠깐만요, 저도 확인해 볼게요."]
# Light noise so dialogues are not all the same length: interjections and a closing exchange.
PREFIX = {False: ["아, 그렇군요.", "음, 그러면", "아, 네.", "그럼", "음, 잠시만요."],
          True: ["아, 그렇구나.", "음, 그러면", "있잖아,", "그럼", "아 참,"]}
CLOSING = {False: [("A", "오늘 정말 감사합니다. 덕분에 잘 해결됐어요.|도와주셔서 고마워요. 많이 도움이 됐어요."),
                   ("B", "별말씀을요. 또 필요하시면 언제든 연락 주세요.|천만에요. 좋은 하루 보내세요.")],
           True: [("A", "고마워. 역시 너밖에 없다.|진짜 고마워. 나중에 밥 살게."),
                  ("B", "뭘, 별거 아니야. 나중에 또 연락해.|아니야, 친구끼리 당연하지.")]}

PARTICLES = {"은(는)": ("은", "는"), "이(가)": ("이", "가"), "을(를)": ("을", "를"), "과(와)": ("과", "와"),
             "으로(로)": ("으로", "로")}
DIGIT_CODA = {"0": "C", "1": "ㄹ", "3": "C", "6": "C", "7": "ㄹ", "8": "ㄹ"}  # how digits are read aloud
MASKS = r"#(?:PhoneNumber|Address|Email|DateOfBirth|CardNumber|CarNumber|PassportNumber|SSN)#"


def _coda(prev):
    """Final sound of the text before a particle: '' (vowel), 'ㄹ' or 'C' (other consonant)."""
    if prev.endswith("#Person1#"):  # read "퍼슨 원"
        return "C"
    ch = prev[-1]
    if "가" <= ch <= "힣":
        jong = (ord(ch) - 0xAC00) % 28
        return "" if jong == 0 else ("ㄹ" if jong == 8 else "C")
    return DIGIT_CODA.get(ch, "")  # masks and other tags count as ending in a vowel


def fix_particles(text):
    def pick(m):
        with_coda, no_coda = PARTICLES[m.group(0)]
        coda = _coda(m.string[:m.start()])
        return with_coda if (coda == "C" if m.group(0) == "으로(로)" else coda) else no_coda
    text = re.sub("|".join(re.escape(p) for p in PARTICLES), pick, text)
    return re.sub(r"(내일|모레)에 ", r"\1 ", text)  # "내일에" -> "내일"


def make_row(rng, sc, seen):
    while True:  # draw a slot combination not used in any split yet
        fields, key = {}, [sc["topic"]]
        for name, options in sc["slots"].items():
            val = rng.choice(options)
            fields.update(val if isinstance(val, dict) else {name: val})
            key.append(str(val))
        b_opens = rng.random() < 0.4  # then B is #Person1# and the asker A is #Person2#
        if (*key, b_opens) not in seen:
            seen.add((*key, b_opens))
            break
    a, b = ("#Person2#", "#Person1#") if b_opens else ("#Person1#", "#Person2#")
    fields.update(A=a, B=b)
    fields.update({role + p.split("(")[0]: tag + p for role, tag in (("A", a), ("B", b)) for p in PARTICLES})
    casual = sc["open"] == FRIEND_OPEN
    turns = ([("B", sc["open"])] if b_opens else []) + list(sc["turns"])
    n_main = len(turns)
    if len(turns) <= 8 and turns[-1][0] == "B" and rng.random() < 0.7:
        turns += CLOSING[casual]
    lines = []
    for j, (role, alts) in enumerate(turns):
        text = rng.choice(alts.split("|")).format(**fields)
        if 0 < j < n_main and not text.startswith(("네", "응", "그", "아")) and rng.random() < 0.5:
            text = rng.choice(PREFIX[casual]) + " " + text
        lines.append(f"{a if role == 'A' else b}: {text}")
    if rng.random() < 0.1 and len(lines) < 10:
        lines.insert(len(lines) - 1, "#Person3#: " + rng.choice(PERSON3))
    return fix_particles("\n".join(lines)), fix_particles(sc["summary"].format(**fields)), sc["topic"]


def build(rng, split, n, seen):
    """First cycle through every scenario once, then draw scenarios at random."""
    scs = [SCENARIOS[i] if i < len(SCENARIOS) else rng.choice(SCENARIOS) for i in range(n)]
    rows = [(f"{split}_{i}", *make_row(rng, sc, seen)) for i, sc in enumerate(scs)]
    return pd.DataFrame(rows, columns=["fname", "dialogue", "summary", "topic"])


def check(out_dir):
    for split in ("train", "dev", "test"):
        df = pd.read_csv(out_dir / f"{split}.csv")
        cols = ["fname", "dialogue"] + ([] if split == "test" else ["summary", "topic"])
        assert list(df.columns) == cols, (split, list(df.columns))
        assert df.notna().all().all() and (df.astype(str).apply(lambda c: c.str.strip()) != "").all().all()
        assert df.dialogue.str.startswith("#Person1#:").all()
        masked = df.dialogue.str.contains(MASKS).mean()
        assert masked >= 0.15
        assert not df.astype(str).apply(lambda c: c.str.contains(r"\(")).any().any(), "unresolved particle"
        if "summary" in df:
            assert df.summary.str.contains("#Person1#|#Person2#").all()
        words = df.dialogue.str.split().str.len()
        print(f"{split}: {len(df)} rows, {(out_dir / f'{split}.csv').stat().st_size} bytes, "
              f"dialogue words {words.min()}-{words.max()} (mean {words.mean():.0f}), masked {masked:.0%}")
    for _, r in pd.read_csv(out_dir / "dev.csv").head(2).iterrows():
        print(f"\n[{r.fname} / {r.topic}]\n{r.dialogue}\n=> {r.summary}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rng, seen = random.Random(13), set()
    for split, n in (("train", 300), ("dev", 50), ("test", 50)):
        df = build(rng, split, n, seen)
        if split == "test":
            df = df[["fname", "dialogue"]]
        df.to_csv(args.out_dir / f"{split}.csv", index=False, lineterminator="\n")
    check(args.out_dir)


if __name__ == "__main__":
    main()
